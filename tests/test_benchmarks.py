"""The benchmark scripts still drive the current API: their CTR section and the scaling probe build, train and
predict every model on tiny data (no peers, a few steps), so a refactor cannot silently break them."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from benchmarks import akt_profile, compare, encoder_speed, peer_data, scaling
from semid import schema as S
from semid.io import read_meta, write_parquet


def _content(prepared, out):
    """Unit content vectors for every user and item, laid out as `semid build` writes them."""
    meta = {"data_hash": read_meta(prepared / S.ITEMS_FILE)["data_hash"]}
    gen = torch.Generator().manual_seed(0)
    paths = {}
    for key, file, table, arg in (
        (S.ITEM, S.ITEM_EMB_FILE, S.ITEMS_FILE, "item_content"),
        (S.USER, S.USER_EMB_FILE, S.USERS_FILE, "user_content"),
    ):
        ids = pl.read_parquet(prepared / table)[key].to_numpy()
        emb = torch.nn.functional.normalize(torch.randn(len(ids), 8, generator=gen), dim=1)  # (N, 8)
        write_parquet(pl.DataFrame({key: ids, S.EMBEDDING: emb.numpy()}), out / file, meta)
        paths[arg] = str(out / file)
    return paths


def test_compare_ctr_section_trains_every_model(prepared_dir, tmp_path, one_thread):
    profile = dataclasses.replace(compare.QUICK, steps=2, repeats=1, epochs=1)
    ctx = compare.Ctx(profile, prepared_dir, tmp_path, tmp_path / "venvs", 1, 64, 256, 0, ())
    peer_dir = tmp_path / "peer-data"
    peer_data.export(prepared_dir, peer_dir)
    out = compare.ctr_section(ctx, peer_dir, _content(prepared_dir, tmp_path))
    models = out["models"]
    assert set(models) == {"deepfm", "deepfm_bn", "akt", "bare"}
    for key in ("deepfm", "deepfm_bn", "akt"):
        assert models[key]["train_samples_per_s"] > 0 and models[key]["predict_samples_per_s"] > 0
        q = models[key]["quality"]
        assert 0.0 <= q["auc"] <= 1.0 and np.isfinite(q["logloss"])
    # AKT is the shipped one (content tower and fields on), only embed size and dropout set for the comparison
    args = models["akt"]["net"]["init_args"]
    assert args["content_tower"] and args["content_fields"] and args["dropout"] == 0.0
    for key in ("deepfm", "akt"):  # a train step (forward + backward) does about 3x a forward's matmul work
        flops = models[key]["matmul_flops_per_sample"]
        assert 2.0 * flops["predict"] < flops["train"] < 4.0 * flops["predict"]
    assert (
        models["akt"]["matmul_flops_per_sample"]["train"]
        > models["deepfm"]["matmul_flops_per_sample"]["train"]
    )
    results = {"ctr": {**out, "akt_item_sids": "test"}}
    names = [g["goal"] for g in compare.goals(results)]
    assert names == []  # no peers, no peer goals
    json.dumps(out)  # what results.json stores


def test_compare_refuses_semids_of_other_data(prepared_dir, tmp_path):
    (tmp_path / "semids").mkdir()
    for file in (S.ITEM_SIDS_FILE, S.USER_SIDS_FILE, S.ITEM_EMB_FILE, S.USER_EMB_FILE):
        write_parquet(pl.DataFrame({"x": [1]}), tmp_path / "semids" / file, {"data_hash": "other"})
    ctx = compare.Ctx(compare.QUICK, prepared_dir, tmp_path, tmp_path, 1, 64, 256, 0, (), tmp_path / "semids")
    with pytest.raises(SystemExit, match="built from other prepared data"):
        compare.akt_inputs(ctx, tmp_path / "unused.parquet")


def test_compare_refuses_to_overwrite_files_it_did_not_write(tmp_path):
    md, js = tmp_path / "notes.md", tmp_path / "data.json"
    compare.refuse_foreign_outputs(md, js)  # nothing there yet
    md.write_text("my own notes\n")
    with pytest.raises(SystemExit, match="--out-md"):
        compare.refuse_foreign_outputs(md, js)
    md.write_text(compare.TITLE + "\n\nan earlier run\n")
    js.write_text('{"rows": [1, 2]}')
    with pytest.raises(SystemExit, match="--out-json"):
        compare.refuse_foreign_outputs(md, js)
    js.write_text(json.dumps({"machine": {}, "profile": {}, "ctr": {}}))
    compare.refuse_foreign_outputs(md, js)  # both are earlier outputs of compare: replaceable
    assert md.read_text().endswith("an earlier run\n")  # the check itself writes nothing


def test_flop_lines_give_akts_ceiling_at_deepfms_rate_per_flop():
    def model(train, predict, f_train=None, f_predict=None):
        m = {"train_samples_per_s": train, "predict_samples_per_s": predict}
        if f_train is not None:
            m["matmul_flops_per_sample"] = {"train": f_train, "predict": f_predict}
        return m

    models = {
        "deepfm": model(100.0, 400.0, 300e3, 100e3),
        "akt": model(40.0, 200.0, 600e3, 200e3),
        "torch_rechub": model(60.0, 150.0),
    }
    train, predict = compare.flop_lines(models)[-2:]
    # twice the work: at DeepFM's rate per FLOP AKT would do 100 / 2 = 50 samples/s, 0.83x the peer's 60
    assert train == "| train | 300.0 | 600.0 | 2.00x | 0.40x | 0.80x | torch-rechub 0.83x |"
    assert predict == "| predict | 100.0 | 200.0 | 2.00x | 0.50x | 1.00x | torch-rechub 1.33x |"
    assert compare.flop_lines({"deepfm": model(1.0, 1.0), "akt": model(1.0, 1.0)}) == []  # older results.json


def test_same_architecture_quality_goal():
    def model(label, auc, gauc):
        return {
            "label": label,
            "train_samples_per_s": 1.0,
            "predict_samples_per_s": 1.0,
            "quality": {"auc": auc, "gauc": gauc},
        }

    models = {
        "deepfm": model("semid-ctr DeepFM (Lightning)", 0.75, 0.73),
        "deepfm_bn": model("semid-ctr DeepFM + BatchNorm MLP (Lightning)", 0.7625, 0.7390),
        "akt": model("semid-ctr AKT (Lightning)", 0.75, 0.73),
        "torch_rechub": model("torch-rechub DeepFM", 0.763, 0.7415),
    }
    goals = {g["goal"]: g for g in compare.goals({"ctr": {"models": models}})}
    auc = next(g for k, g in goals.items() if "BatchNorm" in k and "AUC not below" in k and "GAUC" not in k)
    gauc = next(g for k, g in goals.items() if "BatchNorm" in k and "GAUC" in k)
    assert auc["ok"] is True and auc["measured"] == "-0.0005"  # within 0.1 pt
    assert gauc["ok"] is False and gauc["measured"] == "-0.0025"  # beyond 0.1 pt
    assert not any("DeepFM (Lightning)" in k and "not below" in k and "BatchNorm" not in k for k in goals)


def test_scaling_probe_trains_akt(tmp_path, one_thread):
    data = scaling.write_synthetic(scaling.Size(rows=3_000, items=120, users=200), tmp_path / "data")
    got = scaling.measure_one(data, steps=4, warmup=1, batch_size=256, threads=1)
    assert got["train_samples_per_s"] > 0 and got["parameters"] > 0
    assert got["train_rows"] > 0 and got["items"] >= 120


def test_longtail_passes_its_budget_to_semid_run():
    from benchmarks import longtail

    opts = longtail.parse(["--protocols", "amazon-kitchen", "--trials", "4", "--max_epochs", "3", "--seeds", "0,2",
                           "--models", "floor,akt", "--jobs", "2"])  # fmt: skip
    cmd = longtail.command("amazon-kitchen", opts)
    args = dict(zip(cmd[4::2], cmd[5::2], strict=True))
    assert args["--tune"] == "4" and args["--tuning.max_epochs"] == "3" and args["--jobs"] == "2"
    assert json.loads(args["--seeds"]) == [0, 2] and json.loads(args["--only_models"]) == ["floor", "akt"]
    assert "--jobs" not in longtail.command("amazon-kitchen", dataclasses.replace(opts, jobs=1))
    with pytest.raises(SystemExit):
        longtail.parse(["--jobs", "0"])


def test_longtail_tuned_from_per_protocol_in_one_invocation(tmp_path):
    """`--tuned_from P=SOURCE`: only P skips tuning, from SOURCE's tuned configs; SOURCE may be tuned earlier in the
    same invocation (its configs are read after it ran, so they need not exist yet), never later."""
    from benchmarks import longtail

    argv = ["--protocols", "ml-1m,ml-1m-coldstart", "--tuned_from", "ml-1m-coldstart=ml-1m", "--runs", str(tmp_path),
            "--seeds", "0", "--trials", "2", "--models", "floor"]  # fmt: skip
    opts = longtail.parse(argv)
    assert longtail.source("ml-1m", opts) is None and longtail.source("ml-1m-coldstart", opts) == "ml-1m"
    tuned = dict(
        zip(longtail.command("ml-1m", opts)[4::2], longtail.command("ml-1m", opts)[5::2], strict=True)
    )
    cold = longtail.command("ml-1m-coldstart", opts)
    assert tuned["--tune"] == "2" and "--tune" not in cold
    assert str(tmp_path / "ml-1m-coldstart.tuned-from-ml-1m.yaml") in cold
    assert (
        longtail.check_outputs(dataclasses.replace(opts, out=tmp_path / "LONGTAIL.md")) == {}
    )  # nothing tuned yet
    for bad in ("ml-1m=ml-1m-coldstart", "ml-1m-coldstart=ml-1m-coldstart", "amazon-kitchen=ml-1m", "x="):
        with pytest.raises(SystemExit):  # a source tuned later, itself, a protocol not run, no source
            longtail.parse([*argv[:3], bad, *argv[4:]])


def test_longtail_tuned_from_trains_every_model_from_the_other_protocols_tuned_config(tmp_path):
    from benchmarks import longtail

    tuned = tmp_path / "ml-1m" / "tuned"
    tuned.mkdir(parents=True)
    (tuned / "floor.yaml").write_text("model: {lr: 0.01}\n")
    argv = ["--protocols", "ml-1m-coldstart", "--tuned_from", "ml-1m", "--runs", str(tmp_path), "--seeds", "0",
            "--models", "floor,akt", "--max_epochs", "3"]  # fmt: skip
    opts = longtail.parse(argv)
    with pytest.raises(SystemExit, match="akt.yaml"):  # akt was not tuned there: named before anything runs
        longtail.transferred_config("ml-1m-coldstart", opts)
    (tuned / "akt.yaml").write_text("model: {lr: 0.02}\n")
    config = longtail.transferred_config("ml-1m-coldstart", opts)
    base = yaml.safe_load((longtail.ROOT / "configs" / "pipeline" / "ml-1m-coldstart.yaml").read_text())
    assert config["prepare"] == base["prepare"] and config["common"] == base["common"]
    assert config["models"] == [
        {"name": m, "config": str((tuned / f"{m}.yaml").resolve())} for m in ("floor", "akt")
    ]
    cmd = longtail.command("ml-1m-coldstart", opts)
    args = dict(zip(cmd[4::2], cmd[5::2], strict=True))
    assert args["--config"] == str(tmp_path / "ml-1m-coldstart.tuned-from-ml-1m.yaml")
    assert "--tune" not in args and "--tuning.max_epochs" not in args
    with pytest.raises(SystemExit):  # the source protocol cannot be one of the runs
        longtail.parse(["--protocols", "ml-1m", "--tuned_from", "ml-1m"])
    # nothing runs over a file this benchmark did not write: --out, or a transferred config's path
    out = tmp_path / "LONGTAIL.md"
    assert longtail.check_outputs(dataclasses.replace(opts, out=out)) == {
        tmp_path / "ml-1m-coldstart.tuned-from-ml-1m.yaml": config
    }
    for path in (out, tmp_path / "ml-1m-coldstart.tuned-from-ml-1m.yaml"):
        path.write_text("my notes\n")
        with pytest.raises(SystemExit, match="not an output of this benchmark"):
            longtail.check_outputs(dataclasses.replace(opts, out=out))
        path.write_text(f"{longtail.TITLE if path == out else longtail.TRANSFER_HEADER}\nold\n")
    assert longtail.check_outputs(dataclasses.replace(opts, out=out))


def test_longtail_target_table_reads_the_report_deltas_and_intervals():
    from benchmarks import longtail

    bucket = {"auc": 1.5, "gauc": 1.75, "n": 100, "n_users": 60}
    report = {
        "target": "akt",
        "monitor": "val/auc",
        "deltas": {
            "baseline": "content_features",
            "overall": {"auc": 1.19, "gauc": 1.27, "n": 1000, "n_users": 400},
            "item_buckets": {"tail": bucket, "cold": {**bucket, "n_users": 10}, "head": bucket},
            "user_buckets": {"cold": {"auc": None, "gauc": None, "n": 0, "n_users": 0}},
        },
        "significance": {"bootstrap": {"overall": {"ci_low": 1.08, "ci_high": 1.45}, "item_buckets": {}}},
    }
    lines = longtail.target_lines(report)
    rows = [line for line in lines if line.startswith("| overall") or line.startswith("| item")]
    assert rows[0] == "| overall | all | 1,000 | 400 | +1.19 | +1.27 | [+1.08, +1.45] |"
    assert [r.split(" | ")[1] for r in rows[1:]] == ["head", "tail", "cold"]  # popularity order
    assert rows[-1].endswith("| n/a |") and "10 †" in rows[-1]  # no interval; few users flagged
    assert not any(line.startswith("| user") for line in lines)  # an empty bucket is left out
    assert longtail.target_lines({"target": "akt"}) == []


def test_longtail_calibrated_logloss_uses_the_seeds_validation_map():
    from benchmarks import longtail
    from ctr import metrics
    from ctr.calibration import fit_platt

    rng = np.random.default_rng(0)
    label = (rng.random(2_000) < 0.3).astype(np.int8)

    def frame(noise_seed: int) -> pl.DataFrame:  # over-confident scores of one model
        x = 4 * (label - 0.5) + np.random.default_rng(noise_seed).normal(size=label.size)
        return pl.DataFrame(
            {S.USER: np.arange(label.size) % 50, S.LABEL: label, S.SCORE: 1 / (1 + np.exp(-2 * x))}
        ).cast({S.USER: pl.Int32, S.LABEL: pl.Int8, S.SCORE: pl.Float32})

    test, val = frame(1), frame(2)
    got = longtail.score(longtail.with_calibrated(test, val))
    platt = fit_platt(torch.tensor(val[S.SCORE].to_numpy()), torch.tensor(val[S.LABEL].to_numpy()))
    p, y = torch.tensor(test[S.SCORE].to_numpy()), torch.tensor(test[S.LABEL].to_numpy())
    assert got["logloss_cal"] == pytest.approx(metrics.logloss(platt.apply(p), y), abs=1e-12)
    assert got["logloss_cal"] < got["logloss"]  # over-confident: calibration helps
    assert np.isnan(longtail.score(longtail.with_calibrated(test, None))["logloss_cal"])  # no val: no map


def test_akt_ablations_verdicts_read_the_bootstrap_interval_against_the_paper(tmp_path):
    from benchmarks import akt_ablations as A

    def cell(lo, hi):
        return {"estimate": (lo + hi) / 2, "ci_low": lo, "ci_high": hi, "p_le_0": 0.5, "n_valid": 100}

    def deltas(gauc, tail):
        return {"overall": {"auc": gauc, "gauc": gauc}, "item_buckets": {"tail": {"auc": tail, "gauc": tail}}}

    model = {"seeds": [0, 1, 2], "overall": {"auc": {"mean": 0.7}, "gauc": {"mean": 0.7}, "n_users": 1234}}
    intervals = {  # (overall, tail items) of ablation - akt
        "akt_no_cluster": ((0.1, 0.5), (-0.9, -0.2)),  # costs on tail items, the paper's scope for this part
        "akt_no_gate": ((0.1, 0.4), (-0.3, 0.3)),  # removing it gains: opposite to the paper
        "akt_no_orth": ((-0.2, 0.2), (-0.2, 0.2)),
        "akt_no_cold_dropout": ((0.2, 0.6), (0.0, 0.1)),  # ours: no paper direction
    }
    report = {
        "run": "toy",
        "run_dir": str(tmp_path),
        "target": "akt",
        "models": {"akt": model, **{m: model for m in intervals}},
        "ablations": {
            "models": list(intervals),
            "delta_vs_target": {m: deltas(sum(o) / 2, sum(t) / 2) for m, (o, t) in intervals.items()},
            "bootstrap": {
                m: {"overall": cell(*o), "item_buckets": {"tail": cell(*t)}}
                for m, (o, t) in intervals.items()
            },
        },
    }
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.json").write_text(json.dumps(report))
    out = tmp_path / "ablations.md"
    A.main(["--runs", str(tmp_path), "--out", str(out)])
    rows = {
        line.split(" | ")[0][2:]: line for line in out.read_text().splitlines() if line.startswith("| akt_")
    }
    assert rows["akt_no_cluster"].endswith("| helps (removing it costs): as the paper |")
    assert "| [-0.90, -0.20] |" in rows["akt_no_cluster"] and "| +0.30 |" in rows["akt_no_cluster"]
    assert rows["akt_no_gate"].endswith("| hurts (removing it gains): opposite to the paper |")
    assert rows["akt_no_orth"].endswith("| no measurable effect |")
    assert rows["akt_no_cold_dropout"].endswith("| ours | - | 3 | +0.40 | +0.40 | [+0.20, +0.60] | +0.05 "
                                                "| [+0.00, +0.10] | hurts (removing it gains) |")  # fmt: skip
    with pytest.raises(SystemExit, match="no report"):
        A.main(["--runs", str(tmp_path / "missing"), "--out", str(out)])
    A.main(["--runs", str(tmp_path), "--out", str(out)])  # replaces its own earlier output
    notes = tmp_path / "notes.md"
    notes.write_text("my notes\n")
    with pytest.raises(SystemExit, match="not an output of this script"):
        A.main(["--runs", str(tmp_path), "--out", str(notes)])
    assert notes.read_text() == "my notes\n"


def test_readme_time_reads_the_readmes_first_command_and_the_run_log():
    """benchmarks/readme_time.py times exactly the README's first command, split into set-up and `semid run`."""
    from benchmarks import readme_time

    command = readme_time.readme_command((readme_time.ROOT / "README.md").read_text())
    setup, run = readme_time.split_command(command)
    assert setup.startswith("python3 -m venv .venv") and "pip install" in setup
    assert run.startswith(".venv/bin/semid run --config configs/pipeline/")
    with pytest.raises(SystemExit):
        readme_time.split_command("pip install -e .")
    log = "[prepare] ml-100k: ...\n[semids] runs/ml-100k/semids (131.2s)\n[fit] floor seed 0: ...\n[fit] akt seed 0: ...\n"
    assert readme_time.stage_seconds(log) == (131.2, 2)
    assert readme_time.stage_seconds("") == (None, 0)
    line = readme_time.row("abc1234", 191.0, 473.0, 131.2, 24)
    assert "| 191 | 473 | 664 | 131 | 24 | **missed** |" in line
    from benchmarks.machine import cpu_line, cpu_model

    assert cpu_model() and f"| {cpu_line()} |" in line  # the machine column names the CPU, not the host name
    assert readme_time.row("x", 100.0, 200.0, None, 0).endswith("| 100 | 200 | 300 | n/a | 0 | met |")


def test_msr_loop_overhead_times_every_arm_through_ctr_fit(prepared_dir, tmp_path, one_thread):
    """The real-loop overhead benchmark trains each arm's shipped config over a run folder's prepared data, scenario
    table and vectors, and writes one row per arm (the backbone's overhead 0); a folder without them is refused."""
    from benchmarks import msr_loop_overhead
    from semid import scenarios as SC
    from semid.errors import InputError
    from semid.knowledge import msr

    run = tmp_path / "run"
    (run / "knowledge" / "llm").mkdir(parents=True)
    (run / "prepared").symlink_to(prepared_dir)
    rule = SC.ScenarioRule(side="user", column="age", groups={"young": ["18-24"], "rest": []}, default="rest")
    SC.write(prepared_dir, rule, run / SC.SCENARIOS_FILE)
    n_users = pl.read_parquet(prepared_dir / S.USERS_FILE).height
    rng = np.random.default_rng(0)
    users = msr.Knowledge(pl.DataFrame({S.USER: range(n_users)}, schema={S.USER: pl.Int32}), [""] * n_users)
    scens = msr.Knowledge(pl.DataFrame({SC.SCENARIO: [0, 1]}, schema={SC.SCENARIO: pl.Int32}), [""] * 2)
    kdir = run / "knowledge" / "llm"
    msr.write_vectors(
        kdir / "user_vectors.parquet", users, rng.normal(size=(n_users, 80)), kind="user", meta={}
    )
    msr.write_vectors(
        kdir / "scenario_vectors.parquet", scens, rng.normal(size=(2, 80)), kind="scenario", meta={}
    )
    out = tmp_path / "loop.md"
    common = str(msr_loop_overhead.ROOT / "configs" / "ctr" / "common" / "ml-100k.yaml")
    args = ["--run", str(run), "--common", common, "--steps", "2", "--warmup", "1", "--repeats", "1"]
    msr_loop_overhead.main([*args, "--arms", "star", "meta_llm_pc64", "--out", str(out)])
    rows = [
        line for line in out.read_text().splitlines() if line.startswith("| STAR") or line.startswith("| +")
    ]
    assert len(rows) == 2 and "| +0.0% |" in rows[0] and "meta_llm_pc64" in rows[1]
    with pytest.raises(InputError, match="no scenarios.parquet"):
        (run / SC.SCENARIOS_FILE).unlink()
        msr_loop_overhead.main([*args, "--out", str(out)])


def test_akt_profile_runs_under_bf16_autocast_and_says_so(tmp_path, one_thread, monkeypatch):
    state = []

    def probe(*args):
        state.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return {}

    with monkeypatch.context() as m:
        m.setattr(akt_profile, "_measure", probe)
        akt_profile.measure(1, 8, 1, 1, None, "bf16")
        akt_profile.measure(1, 8, 1, 1, None, "off")
    # every run inside the autocast, or none
    assert state[0] == (True, torch.bfloat16) and state[1][0] is False

    out = tmp_path / "akt_profile.md"
    opts = ["--steps", "2", "--batch-size", "64", "--repeats", "1", "--profile-steps", "1", "--out", str(out)]
    akt_profile.main(["--label", "fp32", *opts])
    result = akt_profile.main(["--label", "bf16", "--autocast", "bf16", *opts])
    assert all(v[0] > 0 for v in result["runs"].values())
    text = out.read_text()
    assert "--autocast bf16`" in text  # the bf16 section's command line names the option
    assert text.count("--autocast") == 1  # and the float32 one's does not
    assert "| fp32 |" in text and "| bf16 |" in text  # both labels in the summary


def test_akt_profile_predicts_in_its_own_batch_size(tmp_path, one_thread, monkeypatch):
    sizes = {"train": [], "predict": []}
    train_run, predict_run = akt_profile.train_run, akt_profile.predict_run

    def count(kind, run):
        return lambda task, *rest: sizes[kind].append([len(b.label) for b in rest[-1]]) or run(task, *rest)

    monkeypatch.setattr(akt_profile, "train_run", count("train", train_run))
    monkeypatch.setattr(akt_profile, "predict_run", count("predict", predict_run))
    out = tmp_path / "akt_profile.md"
    opts = ["--steps", "4", "--batch-size", "16", "--repeats", "1", "--profile-steps", "1", "--out", str(out)]
    akt_profile.main(["--label", "eval64", "--predict-batch-size", "64", *opts])
    # the same 64 samples: four train batches, one eval batch
    assert sizes["train"][-1] == [16] * 4 and sizes["predict"][-1] == [64]
    assert "--predict-batch-size 64`" in out.read_text()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what measure() wraps its runs in
        task = akt_profile.make_task("akt")
        batch = akt_profile.consistent_batches(akt_profile.SPEC, 1, 8)[0]
        task.eval()
        seen = []
        task.net.mlp.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
        task(batch)
    assert seen == [torch.bfloat16]  # the autocast reaches AKT's prediction MLP


def test_encoder_speed_per_dtype_reports_each_dtype_against_the_first(tiny_bert_dir, monkeypatch) -> None:
    texts = encoder_speed.synthetic_item_texts(12)
    monkeypatch.setattr(encoder_speed, "ml1m_item_texts", lambda prepared: texts)
    opts = argparse.Namespace(
        prepared=None, limit=10, dtypes="float32,bfloat16", model=str(tiny_bert_dir), pooling="mean",
        batch_size=4, repeats=2,
    )  # fmt: skip
    report = encoder_speed.dtype_speed(opts)
    rows = {
        line.split(" | ")[0].strip("| "): line.split(" | ")
        for line in report.splitlines()
        if line.startswith("| ")
    }
    assert "10 texts" in report and "min cosine to float32" in report
    assert rows["float32"][3] == "x1.00" and rows["float32"][4] == "1.0000"
    assert 0.99 <= float(rows["bfloat16"][4]) <= 1.0 and rows["bfloat16"][3].startswith("x")


def test_akt_profile_measures_the_real_batches_of_a_run_folder(prepared_dir, tmp_path, one_thread):
    """--data: AKT and DeepFM train and predict on a `semid run` folder's own batches (its DataSpec, semantic IDs
    and content vectors) instead of the synthetic ML-1M ones."""
    from semid.ids import table_meta, write_table

    run = tmp_path / "run"
    (run / "semids").mkdir(parents=True)
    (run / "prepared").symlink_to(prepared_dir)
    _content(prepared_dir, run / "semids")
    data_hash = read_meta(prepared_dir / S.ITEMS_FILE)["data_hash"]
    for key, table, file in (
        (S.ITEM, S.ITEMS_FILE, S.ITEM_SIDS_FILE),
        (S.USER, S.USERS_FILE, S.USER_SIDS_FILE),
    ):
        ids = pl.read_parquet(prepared_dir / table)[key].to_numpy()
        sids = pl.DataFrame(
            {key: ids, "sid_0": ids % 3, "sid_1": ids % 4, S.SID_DEDUP: ids // 12},
            schema=S.sid_schema(key, 2),
        )
        meta = table_meta(
            key=key, codebook_sizes=[3, 4], health={}, encoder="test", seed=0, data_hash=data_hash
        )
        write_table(sids, run / "semids" / file, meta)
    data = akt_profile.run_data(run, 2, 32, 64)
    assert [len(b.label) for b in data.train] == [32, 32] and [len(b.label) for b in data.eval] == [64]
    assert data.spec.item_content_dim == 8 and data.spec.item_sid_sizes[:2] == (3, 4)
    out = tmp_path / "akt_profile.md"
    opts = ["--steps", "2", "--batch-size", "32", "--repeats", "1", "--profile-steps", "1", "--out", str(out)]
    result = akt_profile.main(["--label", "real", "--data", str(run), "--predict-batch-size", "64", *opts])
    assert all(v[0] > 0 for v in result["runs"].values())
    assert f"--data {run}`" in out.read_text()
    with pytest.raises(SystemExit, match="semid run"):
        akt_profile.run_data(tmp_path, 2, 32)
