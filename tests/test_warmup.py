"""The new-item warm-up protocol (ctr.warmup, `ctr warmup`) on a tiny synthetic cold-start run: its rows, the count
and bucket update, what an update may change, and the command's files."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from ctr import warmup as W
from ctr.models import AKT, DeepFM
from pipelines.cli import ctr_main
from pipelines.fit import fit_one, read_config
from pipelines.warmup import load_fit, read_plan
from semid import data, ids, synthetic
from semid import schema as S
from semid.data.activity import add_activity
from semid.errors import InputError
from semid.io import read_meta, write_parquet

pytestmark = pytest.mark.usefixtures("one_thread")

KS = (1, 2)
SMALL = {"embed_dim": 8, "mlp_dims": [16]}
NETS = {
    "deepfm": {"class_path": "ctr.models.deepfm.DeepFM", "init_args": SMALL},
    "sid_features": {"class_path": "ctr.models.sid_features.SIDFeatures", "init_args": SMALL},
    "content_features": {"class_path": "ctr.models.content_features.ContentFeatures", "init_args": SMALL},
    "akt": {"class_path": "ctr.models.akt.AKT", "init_args": {**SMALL, "content_tower": True}},
    "akt_hc": {"class_path": "ctr.models.akt.AKT", "init_args": {**SMALL, "history_content": True}},
}
DATA = {"akt_hc": {"history_content": True}}  # a model config's own data settings


def _prepare(raw: dict, out: Path, cold_items: float) -> Path:
    files = data.RawFiles(raw["inter"], raw["item"], raw["user"])
    split = data.SplitConfig(val_frac=0.2, test_frac=0.2, cold_items=cold_items, seed=0)
    prepared = data.build(files, synthetic.columns(), data.PrepareConfig(split=split), name="synthetic")
    return data.write(prepared, out)


def _semids(prepared: Path, out: Path) -> None:
    """ID tables (2 levels of 4 codes) and unit content vectors for every item and user, as `semid build` lays
    them out."""
    data_hash = read_meta(prepared / S.ITEMS_FILE)["data_hash"]
    gen = torch.Generator().manual_seed(0)
    for key, table, sid_file, emb_file in (
        (S.ITEM, S.ITEMS_FILE, S.ITEM_SIDS_FILE, S.ITEM_EMB_FILE),
        (S.USER, S.USERS_FILE, S.USER_SIDS_FILE, S.USER_EMB_FILE),
    ):
        keys = pl.read_parquet(prepared / table)[key].to_numpy()
        codes = np.stack([keys % 4, (keys // 4) % 4], 1)
        frame = ids.make_table(keys, codes, key=key)
        meta = ids.table_meta(
            key=key,
            codebook_sizes=[4, 4],
            health=ids.health(frame, [4, 4]),
            encoder="t",
            seed=0,
            data_hash=data_hash,
        )
        ids.write_table(frame, out / sid_file, meta)
        emb = torch.nn.functional.normalize(torch.randn(len(keys), 8, generator=gen), dim=1)  # (N, 8)
        write_parquet(
            pl.DataFrame({key: keys, S.EMBEDDING: emb.numpy()}), out / emb_file, {"data_hash": data_hash}
        )


@pytest.fixture(scope="module")
def cold_run(synthetic_raw, tmp_path_factory) -> Path:
    """A `semid run` layout: synthetic data with 20% of the items held out, ID tables, content vectors and one
    fitted seed of each model in NETS (one epoch)."""
    run = tmp_path_factory.mktemp("warmup") / "run"
    prepared = _prepare(synthetic_raw, run / S.PREPARED_DIR, cold_items=0.2)
    (run / S.SEMIDS_DIR).mkdir(parents=True)
    _semids(prepared, run / S.SEMIDS_DIR)
    cfg = run.parent / "cfg"
    cfg.mkdir()
    common = {
        "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
        "data": {"batch_size": 256, "history_len": 5},
        "model": {"monitor": "val/auc"},
    }
    (cfg / "common.yaml").write_text(yaml.safe_dump(common))
    for name, net in NETS.items():
        own = {"model": {"net": net}} | ({"data": DATA[name]} if name in DATA else {})
        (cfg / f"{name}.yaml").write_text(yaml.safe_dump(own))
        configs = [read_config(cfg / "common.yaml", "common"), read_config(cfg / f"{name}.yaml", "model")]
        out = run / S.MODELS_DIR / name / S.seed_dir_name(0)
        fit_one(name, 0, configs, prepared, run / S.SEMIDS_DIR, out, "test")
    return run


@pytest.fixture(scope="module")
def plan(cold_run) -> tuple[W.WarmupPlan, data.BucketConfig]:
    return read_plan(cold_run, list(KS), min_eval_rows=1)


def _keys(frame: pl.DataFrame) -> set[tuple[str, int]]:
    return set(zip(frame[W.SPLIT].to_list(), frame[W.ROW].to_list(), strict=True))


# -- rows ---------------------------------------------------------------------------------------------------------
def test_rows_are_ranked_by_time_then_split_then_file_order():
    val = pl.DataFrame(
        {S.USER: [0, 1, 2, 3], S.ITEM: [7, 7, 9, 5], S.LABEL: [1, 0, 1, 1], S.TIMESTAMP: [5, 3, 1, 1]}
    )
    test = pl.DataFrame({S.USER: [4, 5, 6], S.ITEM: [7, 9, 7], S.LABEL: [0, 1, 1], S.TIMESTAMP: [5, 0, 9]})
    rows = W.new_item_rows({"val": val, "test": test}, [7, 9])
    got = {(r[S.ITEM], r[W.RANK]): (r[W.SPLIT], r[W.ROW]) for r in rows.iter_rows(named=True)}
    # item 7: val row 1 (t=3), then val row 0 and test row 0 both at t=5 (val first), then test row 2 (t=9)
    assert [got[(7, i)] for i in range(4)] == [("val", 1), ("val", 0), ("test", 0), ("test", 2)]
    assert [got[(9, i)] for i in range(2)] == [("test", 1), ("val", 2)]  # t=0 before t=1
    assert 5 not in rows[S.ITEM].to_list()  # not a new item


def test_plan_keeps_items_with_enough_rows_and_fixes_the_evaluation_set():
    n_rows = {1: 9, 2: 7, 3: 6}  # 3 * max(K) = 6 warm-up rows + at least 1 to score
    rows = pl.DataFrame(
        {
            S.USER: list(range(sum(n_rows.values()))),
            S.ITEM: [i for i, n in n_rows.items() for _ in range(n)],
            S.LABEL: [1, 0] * 11,
            S.TIMESTAMP: list(range(22)),
            W.SPLIT: ["val"] * 22,
            W.ROW: list(range(22)),
            W.RANK: [r for n in n_rows.values() for r in range(n)],
        }
    )
    plan = W.plan_warmup(rows, [2, 1], held_out=4)
    assert plan.ks == (1, 2) and plan.eval_from == 6
    assert plan.items.tolist() == [1, 2] and plan.dropped == 2  # item 3 has no row to score; 1 item had none
    ev = plan.evaluation()
    assert sorted(ev[W.RANK].to_list()) == [6, 6, 7, 8]
    for k in plan.ks:
        seen: set = set()
        for stage in (1, 2, 3):
            batch = plan.batch(k, stage)
            assert batch.height == 2 * k  # K rows per kept item
            assert not _keys(batch) & _keys(ev) and not _keys(batch) & seen
            seen |= _keys(batch)
            assert _keys(plan.revealed(k, stage)) == seen
    with pytest.raises(InputError, match="K ="):
        W.plan_warmup(rows, [0], held_out=4)


def test_split_gives_disjoint_seeded_item_sets(plan):
    plan, _ = plan
    tune, report = plan.split(0.5, seed=3)
    a, b = set(tune.items.tolist()), set(report.items.tolist())
    assert a and b and not a & b and a | b == set(plan.items.tolist())
    assert abs(len(a) - len(plan.items) / 2) <= 1
    assert tune.rows.height + report.rows.height == plan.rows.height
    again, _ = plan.split(0.5, seed=3)
    other, _ = plan.split(0.5, seed=4)
    assert again.items.tolist() == tune.items.tolist() and other.items.tolist() != tune.items.tolist()
    for share in (0.0, 1.0):
        with pytest.raises(InputError, match="tune_share"):
            plan.split(share, seed=0)


def test_plan_on_a_run_never_scores_a_warmup_row(plan, cold_run):
    plan, _ = plan
    held = read_meta(cold_run / S.PREPARED_DIR / S.ITEMS_FILE)["held_out_items"]
    assert set(plan.items.tolist()) <= set(held) and len(plan.items) > 3
    ev = _keys(plan.evaluation())
    assert ev and all(not _keys(plan.revealed(k, 3)) & ev for k in plan.ks)
    summary = plan.summary()
    assert summary["eval_rows"] == len(ev) and summary["kept_items"] == len(plan.items)
    assert summary["warmup_rows_per_stage"] == {str(k): k * len(plan.items) for k in plan.ks}


# -- tensors of a stage -------------------------------------------------------------------------------------------
def test_gathered_rows_are_the_split_samples(cold_run, plan):
    """A stage's samples are the data module's val / test samples (same user, item, label, history end)."""
    plan, _ = plan
    _, dm = load_fit(cold_run, cold_run / S.MODELS_DIR / "deepfm" / "seed0")
    dm.setup()
    rows = plan.evaluation()
    got = W.gather_rows(dm.tables, rows)
    for i, r in enumerate(rows.iter_rows(named=True)):
        arrays = dm.tables.splits[r[W.SPLIT]]
        for field in ("user", "item", "label", "hist_end"):
            assert getattr(got, field)[i] == getattr(arrays, field)[r[W.ROW]], (field, r)


def test_revealed_counts_and_buckets_are_what_prepare_would_give(cold_run, plan):
    plan, cfg = plan
    _, dm = load_fit(cold_run, cold_run / S.MODELS_DIR / "deepfm" / "seed0")
    dm.setup()
    tables, new = dm.tables, plan.items
    prepared = cold_run / S.PREPARED_DIR
    items = pl.read_parquet(prepared / S.ITEMS_FILE).select(S.ITEM)
    users = pl.read_parquet(prepared / S.USERS_FILE).select(S.USER)
    train = pl.read_parquet(prepared / S.split_file("train"))
    old = torch.ones(tables.items.count.numel(), dtype=torch.bool)
    old[new] = False
    k = plan.ks[-1]
    for stage in (0, 1, 2, 3):
        revealed = plan.revealed(k, stage)
        count, bucket = W.revealed_activity(tables, revealed, new, cfg)
        assert torch.all(count[new] == stage * k)  # buckets.count = all: every revealed row counts
        assert torch.equal(count[old], tables.items.count[old]) and torch.equal(
            bucket[old], tables.items.bucket[old]
        )
        # the oracle: prepare's own activity with the revealed rows as train rows
        both = pl.concat([train.select(S.ITEM, S.USER, S.LABEL), revealed.select(S.ITEM, S.USER, S.LABEL)])
        expected, _ = add_activity(items, users, both, cfg)
        names = expected.sort(S.ITEM)[S.BUCKET].gather(new.numpy()).to_list()
        assert [S.BUCKETS[b] for b in bucket[new].tolist()] == names
        assert ("cold" in names) == (stage == 0)


# -- what an update may change ------------------------------------------------------------------------------------
def _stage(cold_run, plan, name: str):
    plan, cfg = plan
    task, dm = load_fit(cold_run, cold_run / S.MODELS_DIR / name / "seed0")
    dm.setup()
    count, bucket = W.revealed_activity(dm.tables, plan.revealed(plan.ks[-1], 1), plan.items, cfg)
    warm = W.stage_data(
        dm.tables,
        plan.batch(plan.ks[-1], 1),
        count,
        bucket,
        dm.history_len,
        history_content=dm.history_content,
    )
    return task, warm, plan.items


def test_item_id_tables_are_found_by_probing(cold_run, plan):
    task, warm, _ = _stage(cold_run, plan, "deepfm")
    probe = warm[torch.arange(len(warm))]
    net = task.net
    assert isinstance(net, DeepFM)
    assert {id(t) for t in W.item_id_tables(net, probe, task.spec.n_items)} == {
        id(net.fields.item),
        id(net.first_order.item),
    }
    task, warm, _ = _stage(cold_run, plan, "akt")
    net = task.net
    assert isinstance(net, AKT)
    found = W.item_id_tables(net, warm[torch.arange(len(warm))], task.spec.n_items)
    assert [id(t) for t in found] == [id(net.item_emb.individual)]  # not the shared SID prefix tables


@pytest.mark.parametrize("name", list(NETS))
def test_only_the_new_items_rows_change(cold_run, plan, name):
    task, warm, new = _stage(cold_run, plan, name)
    model = copy.deepcopy(task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = W.trainable(model, warm[torch.arange(len(warm))], new, "new_item_rows")
    assert params, name
    gen = torch.Generator().manual_seed(0)
    loss = W.update_stage(model, warm, params, W.WarmupSettings(lr=0.01, batch_size=4), gen)
    assert math.isfinite(loss)
    tables = {id(p) for p, _ in params}
    rows = torch.zeros(task.spec.n_items + 1, dtype=torch.bool)
    rows[new + 1] = True
    moved = 0
    for key, value in model.state_dict().items():
        param = dict(model.named_parameters()).get(key)
        if param is not None and id(param) in tables:
            assert torch.equal(value[~rows], before[key][~rows]), key  # old items and padding untouched
            moved += int((value[rows] != before[key][rows]).any(1).sum())
        else:
            assert torch.equal(value, before[key]), key  # every other parameter and buffer
    assert moved >= len(new), name  # every new item's row moved (in at least one table)
    for key, value in task.state_dict().items():  # the loaded task is left as it was
        assert torch.equal(value, before[key]), key


def test_admit_starts_a_revealed_item_where_it_was_cold(cold_run, plan):
    """AKT's admit sets a new item's row so that, once revealed (count > 0), its individual part is the content
    tower's f(x) it had while cold, not the row's untrained init; old items' rows stay."""
    task, warm, new = _stage(cold_run, plan, "akt")
    net = task.net.eval()
    batch = warm[torch.arange(len(warm))]
    assert bool((batch.item_count > 0).all())  # revealed: the individual row is read, not the fallback
    cold = batch._replace(item_count=torch.zeros_like(batch.item_count))
    with torch.no_grad():
        fx = net.content(batch.item_content)  # (B, d)
        cold_v = net.item_emb(cold.item + 1, cold.item_sid, cold.item_count, fallback=fx).individual
        before = net.item_emb(batch.item + 1, batch.item_sid, batch.item_count).individual
    assert torch.allclose(cold_v, fx)
    assert not torch.allclose(before, fx, atol=1e-3)  # the random init: what the reveal used to read
    table = net.item_emb.individual.weight.detach().clone()
    net.admit(batch)
    with torch.no_grad():
        after = net.item_emb(batch.item + 1, batch.item_sid, batch.item_count).individual
    torch.testing.assert_close(after, fx, rtol=1e-5, atol=1e-5)
    changed = (net.item_emb.individual.weight != table).any(1).nonzero().squeeze(1)
    assert set(changed.tolist()) <= set((new + 1).tolist())


def test_update_all_changes_the_dense_layers(cold_run, plan):
    task, warm, new = _stage(cold_run, plan, "deepfm")
    before = copy.deepcopy(task.net.mlp.state_dict())
    params = W.trainable(task, warm[torch.arange(len(warm))], new, "all")
    W.update_stage(task, warm, params, W.WarmupSettings(lr=0.01), torch.Generator().manual_seed(0))
    assert any(not torch.equal(v, before[k]) for k, v in task.net.mlp.state_dict().items())


# -- the command --------------------------------------------------------------------------------------------------
def test_command_writes_json_and_markdown(cold_run, plan, tmp_path, capsys):
    plan, _ = plan
    out = tmp_path / "warm.json"
    ctr_main(
        [
            "warmup",
            "--run_dir",
            str(cold_run),
            "--models",
            "deepfm,akt,akt_hc",
            "--k",
            "1,2",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert set(result["models"]) == {"deepfm", "akt", "akt_hc"}  # akt_hc: batches with the history's content
    n_eval = plan.evaluation().height
    assert result["protocol"]["eval_rows"] == n_eval
    for seeds in result["models"].values():
        res = seeds["0"]
        assert res["cold"]["n"] == n_eval and 0.0 < res["cold"]["auc"] < 1.0
        assert res["cold"]["gauc_users"] == result["protocol"]["eval_gauc_users"]
        for k in ("1", "2"):
            for stage in W.STAGES[1:]:
                assert res["k"][k][stage]["n"] == n_eval  # the same rows at every stage and K
                assert math.isfinite(res["k"][k][stage]["auc"]) and math.isfinite(
                    res["k"][k][stage]["warmup_loss"]
                )
    md = out.with_suffix(".md").read_text()
    cold_auc = f"{result['models']['akt']['0']['cold']['auc']:.4f}"
    rows = [line for line in md.splitlines() if line.startswith("| akt | 1 |")]
    assert len(rows) == 3 * 2 and all(cold_auc in rows[i] for i in (0, 1))  # AUC table, one row per K
    assert "warm-c" in md and f"{n_eval} rows" in md
    assert result["models"]["akt"]["0"]["admitted"] and not result["models"]["deepfm"]["0"]["admitted"]
    assert "Warm-started rows" in md and md.split("Warm-started rows")[1].splitlines()[0].endswith(
        ": akt, akt_hc."
    )
    assert "warmup akt seed 0: AUC cold" in capsys.readouterr().out


def test_lr_is_chosen_on_tune_items_and_reported_on_the_others(cold_run, plan, tmp_path):
    plan_, cfg = plan
    task, dm = load_fit(cold_run, cold_run / S.MODELS_DIR / "deepfm" / "seed0")
    dm.setup()
    grid = (1e-4, 0.05)
    res = W.select_lr(task, dm.tables, plan_, cfg, W.WarmupSettings(), grid, history_len=dm.history_len)
    scores = {float(k): v for k, v in res["lr_scores"].items()}
    assert set(scores) == set(grid) and res["lr"] == max(scores, key=scores.get)
    tune, report = plan_.split(0.5, 0)
    assert (res["tune_items"], res["report_items"]) == (len(tune.items), len(report.items))
    assert res["cold"]["n"] == report.evaluation().height  # only the report items are scored
    # the tune score is the protocol's mean warm AUC on the tune items with that lr
    again = W.run_warmup(task, dm.tables, tune, cfg, W.WarmupSettings(lr=grid[0]), history_len=dm.history_len)
    assert scores[grid[0]] == pytest.approx(W.warm_score(again))

    out = tmp_path / "grid.json"
    args = ["warmup", "--run_dir", str(cold_run), "--models", "deepfm", "--k", "1,2", "--out", str(out)]
    ctr_main([*args, "--lr_grid", "0.0001,0.05"])
    result = json.loads(out.read_text())
    assert result["protocol"]["eval_rows"] == report.evaluation().height
    assert result["protocol"]["tune_items"] == len(tune.items)
    assert "Warm-up lr chosen per model" in out.with_suffix(".md").read_text()
    bad = tmp_path / "bad.json"
    with pytest.raises(SystemExit) as exit_:
        ctr_main([*args[:-1], str(bad), "--lr_grid", "0.001", "--lr", "0.01"])
    assert exit_.value.code == 2 and not bad.exists()


def test_a_run_without_held_out_items_is_refused(synthetic_raw, tmp_path):
    _prepare(synthetic_raw, tmp_path / "run" / S.PREPARED_DIR, cold_items=0.0)
    with pytest.raises(InputError, match="no items out of train") as err:
        read_plan(tmp_path / "run", [5], 1)
    assert "cold_items" in err.value.fix


def test_too_large_k_and_unknown_models_are_refused(cold_run, tmp_path):
    with pytest.raises(InputError, match="none of the"):
        read_plan(cold_run, [1000], 1)
    with pytest.raises(SystemExit) as exit_:
        ctr_main(
            ["warmup", "--run_dir", str(cold_run), "--models", "nope", "--out", str(tmp_path / "w.json")]
        )
    assert exit_.value.code == 2 and not (tmp_path / "w.json").exists()
