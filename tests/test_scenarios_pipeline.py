"""The `scenarios:` stage of `semid run` (issue 16) end to end on tiny synthetic data, a tiny random Llama and a tiny
random BERT: the scenario table and knowledge vectors are written once and skipped on a re-run (or rebuilt from the
LLM cache without a model), each fit gets exactly the inputs its network reads, tuning works with them, and the report
shows every scenario."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pipeline_cfg as pc
import polars as pl
import pytest
import torch
import yaml

from ctr.calibration import Platt
from ctr.report.stats import score_scenarios
from pipelines.run import main as run_main
from pipelines.scenarios import NO_INPUTS, ScenarioOutputs, VectorFiles, fit_inputs, knowledge_source
from semid import scenarios as SC
from semid import schema as S
from semid.knowledge import msr
from semid.knowledge.hf import HFBackend

DOCS = Path(__file__).resolve().parents[1] / "docs" / "report.md"
pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = (
    "age_under_25",
    "age_25_34",
    "age_35_plus",
)  # ml-1m-age over the synthetic ages 18-24 / 25-34 / 35-44
SMALL_STAR = {
    "class_path": "ctr.models.star.STAR",
    "init_args": {"embed_dim": 8, "mlp_dims": [16], "aux_dims": [8]},
}
META = {"backbone": SMALL_STAR, "meta_dim": 4, "rank": 2, "scenario_dims": [8]}
MODELS = {
    "deepfm": {"class_path": "ctr.models.deepfm.DeepFM", "init_args": {"embed_dim": 8, "mlp_dims": [16]}},
    "star": SMALL_STAR,
    "meta_learned": {"class_path": "ctr.models.meta.MetaLayers", "init_args": {**META, "source": "learned", "knowledge_dim": 8}},
    "meta_text": {"class_path": "ctr.models.meta.MetaLayers", "init_args": {**META, "source": "prompt_text"}},
    "meta_llm": {"class_path": "ctr.models.meta.MetaLayers", "init_args": META},  # source: MetaLayers' default, llm
}  # fmt: skip


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, synthetic_raw, tiny_bert_dir, tiny_llama) -> dict:
    """The pipeline config as a mapping (written per test with the changes it needs)."""
    root = tmp_path_factory.mktemp("scen_cfg")
    pc.write_files(root, tiny_bert_dir, MODELS)
    prepare = {
        **pc.synthetic_prepare(root, synthetic_raw),
        "split": {"mode": "random", "val_frac": 0.1, "test_frac": 0.1, "seed": 0},
    }
    scenarios = {
        "rule": "ml-1m-age",
        "knowledge": ["llm", "prompt_text"],
        "llm": {"model": str(tiny_llama[0]), "batch_size": 16, "max_length": 256, "dtype": "float32"},
        "encoder": {"model": str(tiny_bert_dir), "max_length": 128},
        # short user prompts: the tiny Llama reads at most 256 tokens
        "prompts": {"recent": 2, "title_chars": 20},
        "cache": str(root / "answers.sqlite"),
    }
    return pc.pipeline("scenarios", root, prepare, MODELS, "meta_llm", scenarios=scenarios)


_write = pc.write


@pytest.fixture(scope="module")
def finished(pipeline, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scen_run") / "run"
    run_main(["--config", str(_write(pipeline, "pipeline.yaml")), "--run_dir", str(out)])
    return out


def _metrics(run: Path, model: str) -> dict:
    return json.loads((run / "models" / model / "seed0" / S.METRICS_FILE).read_text())


def _state(run: Path, model: str) -> dict[str, torch.Tensor]:
    ckpt = torch.load(_metrics(run, model)["best_checkpoint"], map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def _standardised(path: Path, kind: str, n: int) -> torch.Tensor:
    v = torch.from_numpy(msr.read_vectors(path, kind=kind, n=n)[0])
    return (v - v.mean(1, keepdim=True)) / v.std(1, keepdim=True).clamp_min(1e-6)


def test_the_stage_writes_the_table_and_every_sources_vectors(finished):
    run = finished
    users = pl.read_parquet(run / "prepared" / S.USERS_FILE)
    scen = SC.read(run / SC.SCENARIOS_FILE)
    assert scen.names == NAMES and scen.key == S.USER and scen.table.height == users.height
    ages = users.select(S.USER, pl.col("age").list.first()).join(scen.table, on=S.USER)
    assert ages.group_by("age").agg(pl.col(SC.SCENARIO).unique()).sort("age")[SC.SCENARIO].to_list() == [
        [0],
        [1],
        [2],
    ]
    train, items = (pl.read_parquet(run / "prepared" / f) for f in (S.split_file("train"), S.ITEMS_FILE))
    prompts = msr.user_prompts(train, items, users, scen, msr.PromptConfig(recent=2, title_chars=20)).prompts
    for source, dim in (("llm", 32), ("prompt_text", 32)):  # tiny Llama / tiny BERT widths
        folder = run / "knowledge" / source
        u, meta = msr.read_vectors(folder / msr.USER_VECTORS_FILE, kind="user", n=users.height)
        s, _ = msr.read_vectors(folder / msr.SCENARIO_VECTORS_FILE, kind="scenario", n=3)
        assert u.shape == (users.height, dim) and s.shape == (3, dim) and meta["source"] == source
        assert np.unique(u, axis=0).shape[0] == len(set(prompts))  # one vector per distinct prompt
        assert json.loads((folder / "stage.json").read_text())["stage_hash"]
    record = json.loads((run / "knowledge" / "llm" / "stage.json").read_text())
    assert record["llm"]["msr_user"]["misses"] == len(set(prompts))  # each distinct prompt once, now cached


def test_each_fit_reads_exactly_what_its_network_needs(finished):
    run = finished
    n_users = pl.read_parquet(run / "prepared" / S.USERS_FILE).height
    for source, model in (("llm", "meta_llm"), ("prompt_text", "meta_text")):
        state = _state(run, model)
        folder = run / "knowledge" / source
        want_u = _standardised(folder / msr.USER_VECTORS_FILE, "user", n_users)
        want_s = _standardised(folder / msr.SCENARIO_VECTORS_FILE, "scenario", 3)
        assert torch.allclose(state["net.user_knowledge.frozen"], want_u, atol=1e-5), model
        assert torch.allclose(state["net.scenario_knowledge.frozen"], want_s, atol=1e-5), model
    assert _state(run, "meta_learned")["net.user_knowledge.frozen"].numel() == 0  # learned: no file read
    for model in MODELS:  # every fit read the scenario table: per-scenario test metrics
        test = _metrics(run, model)["test"]
        assert {f"scenario/{n}/auc" for n in NAMES} <= set(test), model


def test_the_report_shows_every_scenario(finished):
    run = finished
    report = json.loads((run / "report" / "report.json").read_text())
    test = pl.read_parquet(run / "prepared" / S.split_file("test"))
    codes = test.join(SC.read(run / SC.SCENARIOS_FILE).table, on=S.USER, how="left")[SC.SCENARIO].to_numpy()
    scen = report["scenarios"]
    assert scen["names"] == list(NAMES) and sum(scen["n"].values()) == test.height
    assert scen["n"] == {n: int((codes == i).sum()) for i, n in enumerate(NAMES)}
    assert scen["smallest"] == min(NAMES, key=lambda n: scen["n"][n])
    for model in MODELS:
        pred = pl.read_parquet(run / "models" / model / "seed0" / S.PREDICTIONS_FILE)
        code = pred.join(SC.read(run / SC.SCENARIOS_FILE).table, on=S.USER, how="left")[
            SC.SCENARIO
        ].to_numpy()
        for i, name in enumerate(NAMES):
            p = pred[S.SCORE].to_numpy()[code == i].astype(np.float64)
            y = pred[S.LABEL].to_numpy()[code == i]
            pos, neg = p[y == 1], p[y == 0]
            oracle = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()  # pairwise
            cell = report["models"][model]["scenarios"][name]
            assert cell["auc"]["mean"] == pytest.approx(oracle, abs=1e-6) and cell["n"] == scen["n"][name]
            # each seed's validation map on the scenario's rows
            assert np.isfinite(cell["logloss_cal"]["mean"])
            # the fit's own per-scenario test AUC (same predictions, best checkpoint) agrees
            assert _metrics(run, model)["test"][f"scenario/{name}/auc"] == pytest.approx(oracle, abs=1e-4)
    deltas = scen["deltas"]
    best = report["best_baseline"]
    a, b = report["models"]["meta_llm"], report["models"][best]
    for name in NAMES:
        got = deltas["scenarios"][name]["auc"]["mean_delta"]
        assert got == pytest.approx(
            100 * (a["scenarios"][name]["auc"]["mean"] - b["scenarios"][name]["auc"]["mean"])
        )
    md = (run / "report" / "report.md").read_text()
    assert "## By scenario (test)" in md and all(f"{n} AUC" in md for n in NAMES) and "(smallest)" in md
    assert all(f"{n} logloss (cal.)" in md for n in NAMES)
    assert "auc_by_scenario.png" in report["plots"]
    section = DOCS.read_text().split("## report.json keys of a multi-scenario run", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert len(documented) >= 9
    for path in documented:  # every documented key is in this run's report
        node: list = [report]
        for part in path.split("."):
            keys = {
                "<model>": None,
                "<scenario>": scen["names"],
                "<smetric>": ("auc", "logloss", "logloss_cal"),
            }
            node = [
                child
                for n in node
                for child in ([n[k] for k in (keys[part] or n)] if part in keys else [n[part]])
            ]
        assert node, path
    assert (run / "report" / "auc_by_scenario.png").stat().st_size > 1000


def test_a_rerun_skips_the_stage_and_a_lost_folder_comes_from_the_cache(
    finished, pipeline, capsys, monkeypatch
):
    def no_model(self):
        raise AssertionError("the LLM was loaded although every vector is cached")

    monkeypatch.setattr(HFBackend, "_load", no_model)
    config = str(_write(pipeline, "pipeline.yaml"))
    before = pl.read_parquet(finished / "knowledge" / "llm" / msr.USER_VECTORS_FILE)
    capsys.readouterr()
    run_main(["--config", config, "--run_dir", str(finished)])
    out = capsys.readouterr().out
    for line in (
        "scenarios.parquet: up to date",
        "llm vectors: up to date",
        "prompt_text vectors: up to date",
    ):
        assert f"[scenarios] {line}" in out
    assert all(f"[fit] {m} seed 0: up to date" in out for m in MODELS)
    shutil.rmtree(finished / "knowledge" / "llm")  # lost: rebuilt from the SQLite cache, no model loaded
    run_main(["--config", config, "--run_dir", str(finished)])
    out = capsys.readouterr().out
    assert "[scenarios] llm vectors: " in out and "0 computed" in out
    assert pl.read_parquet(finished / "knowledge" / "llm" / msr.USER_VECTORS_FILE).equals(before)
    assert "[fit] meta_llm seed 0: up to date" in out  # the same vectors: the fit stays done


def test_tuning_trials_and_the_tuned_fit_read_the_vectors(finished, pipeline, tmp_path):
    run = tmp_path / "tuned_run"
    shutil.copytree(finished, run)
    config = str(_write({**pipeline, "tuning": {"max_epochs": 1}}, "tune.yaml"))
    run_main(["--config", config, "--run_dir", str(run), "--tune", "1", "--only_models", "[meta_llm]"])
    tuned = yaml.safe_load((run / "tuned" / "meta_llm.yaml").read_text())
    assert "user_vectors" not in tuned["model"]["net"]["init_args"]  # paths are arguments, not config
    frozen = sorted(p.name for p in (run / "models" / "meta_llm" / "seed0" / "config").iterdir())
    assert frozen == ["00_common.yaml", "01_meta_llm.yaml"]
    n_users = pl.read_parquet(run / "prepared" / S.USERS_FILE).height
    want = _standardised(run / "knowledge" / "llm" / msr.USER_VECTORS_FILE, "user", n_users)
    assert torch.allclose(_state(run, "meta_llm")["net.user_knowledge.frozen"], want, atol=1e-5)


def test_a_model_without_its_source_is_refused_before_any_work(pipeline, tmp_path, capsys):
    cfg = {**pipeline, "scenarios": {**pipeline["scenarios"], "knowledge": ["llm"]}}
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--config", str(_write(cfg, "no_text.yaml")), "--run_dir", str(tmp_path / "r")])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "'meta_text' (MetaLayers, source prompt_text)" in err and "add prompt_text" in err
    assert not (tmp_path / "r").exists()


def test_an_unknown_llm_model_is_refused_before_any_work(pipeline, tmp_path, capsys):
    cfg = {**pipeline, "scenarios": {**pipeline["scenarios"], "llm": {"model": "no-such-model"}}}
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--config", str(_write(cfg, "bad_llm.yaml")), "--run_dir", str(tmp_path / "r")])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "the LLM `model` is neither one of ['gemma3-270m', 'smollm2']" in err and "no-such-model" in err
    assert not (tmp_path / "r").exists()  # refused before prepare wrote anything


def test_only_models_checks_the_sources_of_the_models_it_fits(finished, pipeline, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    cfg = str(
        _write({**pipeline, "scenarios": {**pipeline["scenarios"], "knowledge": ["llm"]}}, "llm_only.yaml")
    )
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--config", cfg, "--run_dir", str(run), "--only_models", "[meta_text]"])
    assert (
        exit_info.value.code != 0
        and "'meta_text' (MetaLayers, source prompt_text)" in capsys.readouterr().err
    )
    before = _metrics(run, "meta_llm")
    # meta_text needs prompt_text, which this config no longer builds: left out by --only_models, it is not checked
    run_main(["--config", cfg, "--run_dir", str(run), "--only_models", "[meta_llm]"])
    assert _metrics(run, "meta_llm") == before  # its inputs are unchanged: the fit is reused


def test_fit_inputs_per_network_and_nothing_without_the_stage():
    def net(class_path: str, **args) -> dict:
        return {"model": {"net": {"class_path": class_path, "init_args": args}}}

    meta = "ctr.models.meta.MetaLayers"
    assert knowledge_source([net(meta)]) == "llm"  # MetaLayers' default source
    assert knowledge_source([net(meta, source="prompt_text")]) == "prompt_text"
    assert knowledge_source([net(meta, source="learned")]) is None
    assert (
        knowledge_source([net("ctr.models.MetaLayers", source="prompt_text")]) == "prompt_text"
    )  # short path
    assert knowledge_source([net("ctr.models.star.STAR")]) is None
    # a later config naming another class drops the earlier class's arguments; the same class keeps them
    assert knowledge_source([net(meta, source="learned"), net("ctr.models.deepfm.DeepFM")]) is None
    assert knowledge_source([net(meta, source="learned"), {"model": {"net": {"class_path": meta}}}]) is None
    assert knowledge_source([net(meta, source="learned"), net("ctr.models.star.STAR"), net(meta)]) == "llm"
    assert knowledge_source([{"trainer": {"max_epochs": 1}}, net(meta)]) == "llm"

    assert (
        fit_inputs(None, [net(meta)]) == NO_INPUTS and NO_INPUTS.args() == [] and NO_INPUTS.fingerprint == {}
    )
    files = VectorFiles(Path("k/u.parquet"), Path("k/s.parquet"), "h_llm")
    outputs = ScenarioOutputs(Path("scenarios.parquet"), "h_table", {"llm": files})
    star = fit_inputs(outputs, [net("ctr.models.star.STAR")])
    assert star.args() == ["--data.scenarios", "scenarios.parquet"] and star.fingerprint == {
        "scenarios": "h_table"
    }
    llm = fit_inputs(outputs, [net(meta)])
    assert llm.args() == [
        "--data.scenarios", "scenarios.parquet",
        "--model.net.init_args.user_vectors", "k/u.parquet",
        "--model.net.init_args.scenario_vectors", "k/s.parquet",
    ]  # fmt: skip
    assert llm.fingerprint == {"scenarios": "h_table", "knowledge": "h_llm"}


def test_score_scenarios_counts_rows_and_leaves_undefined_auc_nan():
    frame = pl.DataFrame(
        {S.SCORE: [0.9, 0.1, 0.8, 0.3, 0.6], S.LABEL: [1, 0, 0, 1, 1], S.USER: [0, 0, 1, 1, 2]},
        schema={S.SCORE: pl.Float32, S.LABEL: pl.Int8, S.USER: pl.Int32},
    )
    codes = np.array([0, 0, 1, 1, 2])
    codes.flags.writeable = False  # as polars' to_numpy() gives them
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on a read-only array: the report must not print that
        got = score_scenarios(frame, codes, ["a", "b", "c"])
    assert got["a"]["auc"] == 1.0 and got["b"]["auc"] == 0.0 and np.isnan(got["c"]["auc"])
    assert [got[n]["n"] for n in "abc"] == [2, 2, 1]
    assert got["c"]["logloss"] == pytest.approx(-np.log(np.float32(0.6)), rel=1e-5)
    assert all(np.isnan(got[n]["logloss_cal"]) for n in "abc")  # no calibration map
    platt = Platt(a=2.0, b=-0.5, n=5)
    cal = score_scenarios(frame, np.array([0, 0, 1, 1, 2]), ["a", "b", "c"], platt)
    p = platt.apply(torch.tensor([0.6])).item()
    assert cal["c"]["logloss_cal"] == pytest.approx(-np.log(p), rel=1e-6)
    assert cal["a"]["auc"] == got["a"]["auc"] and cal["a"]["logloss"] == got["a"]["logloss"]
