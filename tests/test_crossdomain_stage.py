"""The `crossdomain:` stage of `semid run` (issue 17) on a tiny Food -> Kitchen release: RGCD-Rep IDs (and the
no-routing ablation) and AIR intents are built once and skipped on a re-run; each model reads what its `inputs:`
ask for (source history, the RGCD table instead of the `semid build` one) and an AIRNet model gets the intents;
a model reading nothing keeps its hash; a model asking for an absent stage is refused before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pipeline_cfg as pc
import polars as pl
import pytest
import torch
import yaml

from pipelines.crossdomain_stage import (
    INTENTS_DIR,
    NO_CROSS,
    RGCD_DIR,
    RGCD_NO_ROUTING_DIR,
    STAGE_RECORD,
    CrossDomainStage,
    CrossOutputs,
    RGCDStage,
    check_crossdomain,
    check_rgcd_covers,
    cross_inputs,
)
from pipelines.run import main as run_main
from semid import schema as S
from semid.errors import InputError
from semid.ids import read_table, write_table
from semid.intents import INTENTS_FILE, read_intents
from tests.test_crossdomain import _write_release

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"embed_dim": 8, "mlp_dims": [16]}
NETS = {
    "deepfm": ("ctr.models.deepfm.DeepFM", []),
    "din_source": ("ctr.models.din.DIN", ["source_history"]),
    "sid": ("ctr.models.sid_features.SIDFeatures", []),
    "sid_rgcd": ("ctr.models.sid_features.SIDFeatures", ["rgcd_ids"]),
    "sid_rgcd_no_routing": ("ctr.models.sid_features.SIDFeatures", ["rgcd_ids_no_routing"]),
    "air": ("ctr.models.air.AIRNet", ["source_history"]),
}
RGCD_LEVELS = (3, 3)  # the RGCD table's codebooks differ from the `semid build` ones (2 x 4): a visible shape
RGCD = {
    "teacher": {"mode": "fallback"},
    "student": {"dim": 8, "stage1_epochs": 1, "stage2_epochs": 1},
    "rqvae": {"levels": 2, "codebook_size": 3, "max_epochs": 2, "min_level0_utilization": 0.0},
    "no_routing": True,
}
INTENTS = {"use_llm": False, "config": {"depth": 2}}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_bert_dir) -> dict:
    """The pipeline config as a mapping (written per test with the changes it needs)."""
    root = tmp_path_factory.mktemp("cross_cfg")
    release = _write_release(root / "release")
    common = {
        "model": {"monitor": "val/auc"},
        "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
        "data": {"batch_size": 64, "history_len": 6},
    }
    nets = {name: {"class_path": net, "init_args": SMALL} for name, (net, _) in NETS.items()}
    pc.write_files(root, tiny_bert_dir, nets, common)
    prepare = {
        "dataset": "amazon-food-kitchen",
        "source": str(release),
        "split": {"mode": "leave_last_out"},
        "negatives": {"per_positive": 2, "ranking": 5},
    }
    rgcd = {**RGCD, "encoder": {"model": str(tiny_bert_dir)}}
    cfg = pc.pipeline(
        "cross", root, prepare, NETS, "sid_rgcd", crossdomain={"rgcd": rgcd, "intents": INTENTS}
    )
    cfg["models"] = [
        {**m, **({"inputs": NETS[m["name"]][1]} if NETS[m["name"]][1] else {})} for m in cfg["models"]
    ]
    return cfg


_write = pc.write


@pytest.fixture(scope="module")
def finished(pipeline, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cross_run") / "run"
    run_main(["--config", str(_write(pipeline, "pipeline.yaml")), "--run_dir", str(out)])
    return out


def _metrics(run: Path, model: str) -> dict:
    return json.loads((run / "models" / model / "seed0" / S.METRICS_FILE).read_text())


def _checkpoint(run: Path, model: str) -> dict:
    return torch.load(_metrics(run, model)["best_checkpoint"], map_location="cpu", weights_only=True)


def test_the_stage_writes_rgcd_ids_the_ablation_and_intents(finished):
    n_items = pl.read_parquet(finished / "prepared" / S.ITEMS_FILE).height
    data_hash = json.loads((finished / RGCD_DIR / "rgcd.json").read_text())["data_hash"]
    for folder in (RGCD_DIR, RGCD_NO_ROUTING_DIR):
        table, meta = read_table(finished / folder / S.ITEM_SIDS_FILE, key=S.ITEM, data_hash=data_hash)
        assert table.height == n_items and meta["codebook_sizes"] == list(RGCD_LEVELS)
        report = json.loads((finished / folder / "rgcd.json").read_text())
        assert set(report["recall@10"]) >= {"z_t", "raw"}
        assert json.loads((finished / folder / STAGE_RECORD).read_text())["stage_hash"]
    routing = json.loads((finished / RGCD_DIR / "rgcd.json").read_text())["history"]["stage2"]
    ablated = json.loads((finished / RGCD_NO_ROUTING_DIR / "rgcd.json").read_text())["history"]["stage2"]
    assert all(epoch["routing"] == 0.0 for epoch in ablated) and any(
        epoch["routing"] > 0 for epoch in routing
    )
    intents = read_intents(finished / INTENTS_DIR / INTENTS_FILE, n_items=n_items, data_hash=data_hash)
    assert intents.n_nodes > 0 and intents.item_nodes.shape[0] == n_items
    assert (intents.item_nodes[:, 0, 0] > 0).all()  # the fallback gives every item its ID-prefix chain


def test_each_model_reads_what_it_asked_for(finished):
    run = finished
    data = {m: _checkpoint(run, m)["datamodule_hyper_parameters"] for m in NETS}
    semids, rgcd = str(run / "semids" / S.ITEM_SIDS_FILE), str(run / RGCD_DIR / S.ITEM_SIDS_FILE)
    assert data["sid"]["item_sids"] == data["deepfm"]["item_sids"] == semids
    assert data["sid_rgcd"]["item_sids"] == rgcd
    assert data["sid_rgcd_no_routing"]["item_sids"] == str(run / RGCD_NO_ROUTING_DIR / S.ITEM_SIDS_FILE)
    # the fit really read the RGCD table: its prefix embeddings have the RGCD codebooks' shapes
    shapes = {
        m: {k: tuple(v.shape) for k, v in _checkpoint(run, m)["state_dict"].items()}
        for m in ("sid", "sid_rgcd")
    }
    differ = {k for k in shapes["sid"] if "item_sid" in k and shapes["sid"][k] != shapes["sid_rgcd"].get(k)}
    assert differ, "the rgcd_ids model built the same SID tables as the semid build one"
    # the source history reached the DIN arm (and AIR, which asked too), not the others
    for model in NETS:
        want = str(run / "prepared") if "source_history" in NETS[model][1] else None
        assert data[model]["source_history"] == want, model
    air = _checkpoint(run, "air")["hyper_parameters"]["net"]["init_args"]
    assert air["intents"] == str(run / INTENTS_DIR / INTENTS_FILE)
    for model in NETS:
        assert _metrics(run, model)["test"]["auc"] > 0


def test_a_rerun_skips_and_a_model_reading_nothing_keeps_its_hash(finished, pipeline, tmp_path, capsys):
    capsys.readouterr()
    run_main(["--config", str(_write(pipeline, "pipeline.yaml")), "--run_dir", str(finished)])
    out = capsys.readouterr().out
    assert f"[rgcd] {RGCD_DIR}: up to date" in out and f"[rgcd] {RGCD_NO_ROUTING_DIR}: up to date" in out
    assert f"[intents] {INTENTS_FILE}: up to date" in out
    assert all(f"[fit] {m} seed 0: up to date" in out for m in NETS)

    run = tmp_path / "changed"
    shutil.copytree(finished, run)
    changed = {
        **pipeline,
        "crossdomain": {**pipeline["crossdomain"], "intents": {**INTENTS, "config": {"depth": 1}}},
    }
    run_main(["--config", str(_write(changed, "changed.yaml")), "--run_dir", str(run)])
    out = capsys.readouterr().out
    assert f"[intents] {INTENTS_FILE}: up to date" not in out and f"[rgcd] {RGCD_DIR}: up to date" in out
    assert "[fit] air seed 0: up to date" not in out  # the only reader of the intents is refitted
    assert all(f"[fit] {m} seed 0: up to date" in out for m in NETS if m != "air")

    # without the section, the models that read nothing of it keep the hashes they had with it
    no_stage = {k: v for k, v in pipeline.items() if k != "crossdomain"}
    no_stage["models"] = [m for m in pipeline["models"] if m["name"] in ("deepfm", "sid", "din_source")]
    run_main(["--config", str(_write(no_stage, "no_stage.yaml")), "--run_dir", str(run)])
    out = capsys.readouterr().out
    assert all(f"[fit] {m} seed 0: up to date" in out for m in ("deepfm", "sid", "din_source"))
    assert "[rgcd]" not in out and "[intents]" not in out


def test_tuning_trials_read_the_inputs(finished, pipeline, tmp_path, monkeypatch):
    import pipelines.tune

    run = tmp_path / "tuned_run"
    shutil.copytree(finished, run)
    real, seen = pipelines.tune.tune, []

    def tune(*args, **kwargs):  # the configs every trial applies, read before the stage removes them
        seen.extend(yaml.safe_load(Path(c).read_text()) for c in kwargs["common"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipelines.tune, "tune", tune)
    config = str(_write({**pipeline, "tuning": {"max_epochs": 1}}, "tune.yaml"))
    run_main(["--config", config, "--run_dir", str(run), "--tune", "1", "--only_models", "[air]"])
    record = json.loads((run / "tuned" / "air.json").read_text())
    assert record["best"]["epochs"] >= 1  # a finished trial: AIRNet built, so the trial had the intents
    assert {"source_history": str(run / "prepared")} in [c.get("data") for c in seen]
    tuned = yaml.safe_load((run / "tuned" / "air.yaml").read_text())
    assert "source_history" not in (
        tuned.get("data") or {}
    )  # paths are arguments, never written into a config
    assert "intents" not in tuned["model"]["net"].get("init_args", {})
    assert _checkpoint(run, "air")["hyper_parameters"]["net"]["init_args"]["intents"] == str(
        run / INTENTS_DIR / INTENTS_FILE
    )


@pytest.mark.parametrize(
    ("drop", "model", "message"),
    [
        (
            "rgcd",
            "sid_rgcd",
            "'sid_rgcd' asks for input rgcd_ids, and the pipeline has no `crossdomain: rgcd:`",
        ),
        ("intents", "air", "'air' (ctr.models.air.AIRNet) reads AIR intent paths"),
    ],
)
def test_a_model_asking_for_an_absent_stage_is_refused_before_any_work(
    pipeline, tmp_path, capsys, drop, model, message
):
    cfg = {**pipeline, "crossdomain": {k: v for k, v in pipeline["crossdomain"].items() if k != drop}}
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--config", str(_write(cfg, f"no_{drop}.yaml")), "--run_dir", str(tmp_path / "r")])
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_check_crossdomain_refusals():
    deepfm = [{"model": {"net": {"class_path": "ctr.models.deepfm.DeepFM"}}}]
    stage = CrossDomainStage(rgcd=RGCDStage())
    check_crossdomain(stage, "amazon-food-kitchen", {"m": ["rgcd_ids", "source_history"]}, {"m": deepfm})
    cases = [
        (stage, "ml-100k", ["source_history"], "only a prepared amazon-food-kitchen dataset"),
        (stage, "amazon-food-kitchen", ["rgcd_ids_no_routing"], "does not build the no-routing ablation"),
        (CrossDomainStage(rgcd=RGCDStage(items="paired")), None, ["rgcd_ids"], "items: paired"),
        (
            CrossDomainStage(rgcd=RGCDStage(no_routing=True)),
            None,
            ["rgcd_ids", "rgcd_ids_no_routing"],
            "both",
        ),
    ]
    for cross, dataset, wants, message in cases:
        with pytest.raises(InputError, match=message):
            check_crossdomain(cross, dataset, {"m": wants}, {"m": deepfm})
    air = [{"model": {"net": {"class_path": "ctr.models.AIRNet", "init_args": {"intents": "mine.parquet"}}}}]
    check_crossdomain(None, None, {"m": []}, {"m": air})  # an AIRNet with intents of its own needs no stage
    assert cross_inputs(None, ["source_history"], deepfm) == NO_CROSS
    assert cross_inputs(CrossOutputs(), [], deepfm) == NO_CROSS and NO_CROSS.fingerprint == {}


def test_an_rgcd_table_missing_an_item_is_refused(finished, tmp_path):
    path = finished / RGCD_DIR / S.ITEM_SIDS_FILE
    table, meta = read_table(path, key=S.ITEM)
    write_table(table.filter(pl.col(S.ITEM) != 3), tmp_path / S.ITEM_SIDS_FILE, meta)
    check_rgcd_covers(path, finished / "prepared")
    with pytest.raises(InputError, match="have no RGCD-Rep ID: \\[3\\]"):
        check_rgcd_covers(tmp_path / S.ITEM_SIDS_FILE, finished / "prepared")


def test_the_amazon_crossdomain_protocol_pairs_its_arms():
    """The shipped protocol passes the before-any-work checks, and each module's arm differs from its baseline by
    one input or one network."""
    from pipelines.fit import read_config
    from pipelines.run import run
    from tests.test_configs import CONFIGS, _parser

    parser = _parser(run)
    cfg = parser.instantiate(
        parser.parse_args(["--config", str(CONFIGS / "pipeline" / "amazon-crossdomain.yaml")])
    )
    root = CONFIGS.parent
    models = {m.name: m for m in cfg.models}
    parsed = {
        n: [read_config(root / p, "c").parsed for p in [*cfg.common, m.config]] for n, m in models.items()
    }
    check_crossdomain(cfg.crossdomain, cfg.prepare.dataset, {n: m.inputs for n, m in models.items()}, parsed)
    assert cfg.crossdomain.rgcd.no_routing and cfg.crossdomain.rgcd.items == "all"
    assert cfg.crossdomain.intents is not None
    assert models["deepfm_source"].config == models["deepfm"].config and models["deepfm"].inputs == []
    assert models["deepfm_source"].inputs == ["source_history"] == models["din_source"].inputs
    assert models["rgcd"].config == models["sid_source"].config
    assert models["rgcd"].inputs == [*models["sid_source"].inputs, "rgcd_ids"]
    assert models["rgcd_no_routing"].inputs == [*models["sid_source"].inputs, "rgcd_ids_no_routing"]
    for air in ("air", "air_no_retrieval", "air_flat"):
        assert models[air].inputs == models["deepfm_source"].inputs
    assert cfg.target in models and set(cfg.report.baselines) <= set(models)
    assert {"val/auc"} == {c.get("model", {}).get("monitor") for c in parsed["floor"][:-1]}
