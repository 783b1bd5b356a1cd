"""The `imagine:` stage of `semid run` (issue 15) on tiny synthetic data: `semid imagine` runs once into
`<run>/imagined/` and is skipped on a re-run; only the models whose network reads imagined behaviours get the file
(in their fits and tuning trials) and its hash; such a model without the stage is refused before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pipeline_cfg as pc
import polars as pl
import pytest
import torch
import yaml

from pipelines.imagine_stage import (
    IMAGINED_DIR,
    NO_IMAGINED,
    STAGE_RECORD,
    ImagineOutputs,
    imagined_input,
    net_class,
    reads_imagined,
)
from pipelines.run import main as run_main
from semid import imagine as IM
from semid import schema as S

pytestmark = pytest.mark.usefixtures("one_thread")

K = 3
SMALL = {"embed_dim": 8, "mlp_dims": [16]}
MODELS = {
    "deepfm": {"class_path": "ctr.models.deepfm.DeepFM", "init_args": SMALL},
    "deepfm_imagined": {"class_path": "ctr.models.imagined.ImaginedDeepFM", "init_args": SMALL},
    "din_imagined": {"class_path": "ctr.models.ImaginedDIN", "init_args": SMALL},  # the short path
}
IMAGINE = {
    "k": K,
    "max_history": 1000,  # every user with train positives: the synthetic users are short of none
    "model": {"d_model": 16, "layers": 1, "heads": 2, "dropout": 0.0, "max_len": 8},
    "train": {"epochs": 1, "batch_size": 64, "seed": 0},
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, synthetic_raw, tiny_bert_dir) -> dict:
    """The pipeline config as a mapping (written per test with the changes it needs)."""
    root = tmp_path_factory.mktemp("imagine_cfg")
    pc.write_files(root, tiny_bert_dir, MODELS)
    prepare = pc.synthetic_prepare(root, synthetic_raw)
    return pc.pipeline("imagine", root, prepare, MODELS, "deepfm_imagined", imagine=IMAGINE)


_write = pc.write


@pytest.fixture(scope="module")
def finished(pipeline, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imagine_run") / "run"
    run_main(["--config", str(_write(pipeline, "pipeline.yaml")), "--run_dir", str(out)])
    return out


def _metrics(run: Path, model: str) -> dict:
    return json.loads((run / "models" / model / "seed0" / S.METRICS_FILE).read_text())


def _data_args(run: Path, model: str) -> dict:
    ckpt = torch.load(_metrics(run, model)["best_checkpoint"], map_location="cpu", weights_only=True)
    return ckpt["datamodule_hyper_parameters"]


def test_the_stage_writes_semid_imagines_output_once(finished):
    folder = finished / IMAGINED_DIR
    imagined = pl.read_parquet(folder / IM.IMAGINED_FILE)
    train = pl.read_parquet(finished / "prepared" / S.split_file("train"))
    with_positives = train.filter(pl.col(S.LABEL) == 1)[S.USER].n_unique()
    assert imagined.schema == IM.IMAGINED_SCHEMA
    assert imagined[S.USER].n_unique() == with_positives and imagined.height == K * with_positives
    assert sorted(imagined[IM.RANK].unique().to_list()) == list(range(K))
    record = json.loads((folder / STAGE_RECORD).read_text())
    assert record["stage_hash"] and record["settings"]["k"] == K
    assert json.loads((folder / IM.CONSISTENCY_FILE).read_text())["k"] == K  # semid imagine's own record


def test_only_the_imagined_models_read_the_file(finished):
    path = str(finished / IMAGINED_DIR / IM.IMAGINED_FILE)
    for model in ("deepfm_imagined", "din_imagined"):  # their networks refuse to build without it
        assert _data_args(finished, model)["imagined"] == path, model
    assert _data_args(finished, "deepfm")["imagined"] is None
    for model in MODELS:
        assert _metrics(finished, model)["test"]["auc"] > 0


def test_a_rerun_skips_the_stage_and_a_new_setting_refits_only_its_readers(
    finished, pipeline, tmp_path, capsys
):
    capsys.readouterr()
    run_main(["--config", str(_write(pipeline, "pipeline.yaml")), "--run_dir", str(finished)])
    out = capsys.readouterr().out
    assert f"[imagine] {IM.IMAGINED_FILE}: up to date" in out
    assert all(f"[fit] {m} seed 0: up to date" in out for m in MODELS)

    run = tmp_path / "changed"
    shutil.copytree(finished, run)
    changed = {**pipeline, "imagine": {**IMAGINE, "train": {**IMAGINE["train"], "seed": 1}}}
    run_main(["--config", str(_write(changed, "changed.yaml")), "--run_dir", str(run)])
    out = capsys.readouterr().out
    assert f"[imagine] {IM.IMAGINED_FILE}: up to date" not in out and "[imagine] " in out
    assert "[fit] deepfm seed 0: up to date" in out  # reads no imagined view: its hash is unchanged
    assert "[fit] deepfm_imagined seed 0: up to date" not in out
    assert "[fit] din_imagined seed 0: up to date" not in out

    # without the section, a model that reads no imagined view keeps the hash it had with it
    no_stage = {k: v for k, v in pipeline.items() if k != "imagine"}
    no_stage["models"] = [m for m in pipeline["models"] if m["name"] == "deepfm"]
    run_main(["--config", str(_write(no_stage, "no_stage.yaml")), "--run_dir", str(run)])
    out = capsys.readouterr().out
    assert "[fit] deepfm seed 0: up to date" in out and "[imagine]" not in out


def test_tuning_trials_read_the_file(finished, pipeline, tmp_path):
    run = tmp_path / "tuned_run"
    shutil.copytree(finished, run)
    config = str(_write({**pipeline, "tuning": {"max_epochs": 1}}, "tune.yaml"))
    run_main(["--config", config, "--run_dir", str(run), "--tune", "1", "--only_models", "[deepfm_imagined]"])
    record = json.loads((run / "tuned" / "deepfm_imagined.json").read_text())
    assert record["best"]["epochs"] >= 1  # a finished trial: ImaginedDeepFM built, so the trial had the file
    tuned = yaml.safe_load((run / "tuned" / "deepfm_imagined.yaml").read_text())
    assert "imagined" not in (tuned.get("data") or {})  # a path is an argument, never written into the config
    assert _data_args(run, "deepfm_imagined")["imagined"] == str(run / IMAGINED_DIR / IM.IMAGINED_FILE)


def test_an_imagined_model_without_the_stage_is_refused_before_any_work(pipeline, tmp_path, capsys):
    cfg = {k: v for k, v in pipeline.items() if k != "imagine"}
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--config", str(_write(cfg, "no_imagine.yaml")), "--run_dir", str(tmp_path / "r")])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "'deepfm_imagined' (ctr.models.imagined.ImaginedDeepFM) reads imagined behaviours" in err
    assert "add an `imagine:` section" in err
    assert not (tmp_path / "r").exists()


def test_imagined_input_per_network():
    def net(class_path: str) -> dict:
        return {"model": {"net": {"class_path": class_path, "init_args": {"embed_dim": 8}}}}

    imag, din = "ctr.models.imagined.ImaginedDIN", "ctr.models.din.DIN"
    assert net_class([net("ctr.models.ImaginedDIN")]) == imag  # the short path, normalised
    assert net_class([{"trainer": {"max_epochs": 1}}]) is None
    assert reads_imagined([net(imag)]) and reads_imagined([net("ctr.models.ImaginedDeepFM")])
    assert not reads_imagined([net(din)]) and not reads_imagined([net("no.such.Net")])
    assert not reads_imagined([net(imag), net(din)])  # a later config names another network
    outputs = ImagineOutputs(Path("run/imagined/imagined.parquet"), "h_imag")
    got = imagined_input(outputs, [net(imag)])
    assert got.args() == ["--data.imagined", "run/imagined/imagined.parquet"]
    assert got.fingerprint == {"imagined": "h_imag"}
    assert imagined_input(outputs, [net(din)]) == NO_IMAGINED and NO_IMAGINED.args() == []
    assert imagined_input(None, [net(imag)]) == NO_IMAGINED and NO_IMAGINED.fingerprint == {}


def test_the_beam_joins_the_stage_hash_only_when_set_and_a_bad_one_is_refused():
    from pipelines.imagine_stage import ImagineStage, check_imagined, stage_settings
    from semid.errors import InputError

    assert "beam" not in stage_settings(ImagineStage())  # the exact default: the hash runs already have
    assert stage_settings(ImagineStage(beam=64))["beam"] == 64
    check_imagined(ImagineStage(beam=1), {})
    with pytest.raises(InputError, match="beam=0"):
        check_imagined(ImagineStage(beam=0), {})
