"""Every YAML shipped in configs/ parses against the signature it configures, and every model config trains."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from pipelines.build_semids import build
from pipelines.console import plain_argv
from pipelines.run import run
from pipelines.train import cli
from tests.test_imagined_view import write_imagined

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODEL_CONFIGS = sorted((CONFIGS / "ctr").glob("*.yaml"))
COMMON_CONFIGS = sorted((CONFIGS / "ctr" / "common").glob("*.yaml"))


def _parser(function) -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(function)
    return parser


@pytest.mark.parametrize("path", sorted((CONFIGS / "pipeline").glob("*.yaml")), ids=lambda p: p.name)
def test_pipeline_configs(path):
    cfg = _parser(run).parse_args(["--config", str(path)])
    root = CONFIGS.parent
    for ref in [cfg.semids, *cfg.common, *(m.config for m in cfg.models)]:
        assert (root / ref).exists(), ref
    names = [m.name for m in cfg.models]
    assert cfg.target in names and len(set(names)) == len(names)


@pytest.mark.parametrize("path", sorted((CONFIGS / "semid").glob("*.yaml")), ids=lambda p: p.name)
def test_semid_configs(path):
    cfg = _parser(build).parse_args(["--config", str(path), "--data_dir", "d", "--out", "o"])
    assert cfg.encoder.model == "default"


@pytest.fixture(scope="module")
def content_dir(prepared_dir, tmp_path_factory) -> Path:
    """Random unit content vectors for the prepared dataset, laid out as `semid build` writes them."""
    import torch

    from semid import schema as S
    from semid.io import read_meta, write_parquet

    root = tmp_path_factory.mktemp("content")
    meta = {"data_hash": read_meta(prepared_dir / S.ITEMS_FILE)["data_hash"]}
    gen = torch.Generator().manual_seed(0)
    for key, file, table in (
        (S.ITEM, S.ITEM_EMB_FILE, S.ITEMS_FILE),
        (S.USER, S.USER_EMB_FILE, S.USERS_FILE),
    ):
        ids = pl.read_parquet(prepared_dir / table)[key].to_numpy()
        emb = torch.nn.functional.normalize(torch.randn(len(ids), 8, generator=gen), dim=1)  # (N, 8)
        write_parquet(pl.DataFrame({key: ids, S.EMBEDDING: emb.numpy()}), root / file, meta)
    return root


@pytest.fixture(scope="module")
def imagined_dir(prepared_dir, tmp_path_factory) -> Path:
    """An imagined.parquet for the prepared dataset, laid out as `semid imagine` writes it."""
    return write_imagined(prepared_dir, tmp_path_factory.mktemp("imagined")).parent


def _needs_imagined(model: Path) -> bool:
    """Model YAMLs whose network reads `semid imagine`'s output (data.imagined is a per-run path)."""
    return yaml.safe_load(model.read_text())["model"]["net"]["class_path"].startswith("ctr.models.imagined.")


def _one_batch(
    common: Path, model: Path, prepared_dir: Path, tmp_path: Path, content: Path, imagined: Path | None = None
):
    args = [
        "--config", str(common),
        "--config", str(model),
        "--data.data_dir", str(prepared_dir),
        "--data.item_content", str(content),
        "--data.user_content", str(content),
        "--trainer.fast_dev_run", "true",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false",
        "--trainer.default_root_dir", str(tmp_path),
        *(["--data.imagined", str(imagined)] if imagined is not None else []),
    ]  # fmt: skip
    with plain_argv():
        c = cli(args, run=False)
    c.trainer.fit(c.model, datamodule=c.datamodule)
    assert c.trainer.state.finished
    return c


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.name)
def test_model_configs_train_one_batch(path, prepared_dir, tmp_path, content_dir, imagined_dir):
    imagined = imagined_dir if _needs_imagined(path) else None
    c = _one_batch(COMMON_CONFIGS[0], path, prepared_dir, tmp_path, content_dir, imagined)
    expected = yaml.safe_load(path.read_text())["model"]
    net = expected["net"]
    assert type(c.model.net).__name__ == net["class_path"].rsplit(".", 1)[1]
    for key, value in net.get("init_args", {}).items():
        assert c.model.hparams["net"]["init_args"][key] == value
    for key, value in expected.items():
        if key != "net":
            assert c.model.hparams[key] == value


@pytest.mark.parametrize("common", COMMON_CONFIGS, ids=lambda p: p.name)
def test_common_configs_parse_and_train_one_batch(common, prepared_dir, tmp_path, content_dir):
    """Every common config (trainer + data settings) is parsed strictly (a typo like `max_epoch` fails here)."""
    c = _one_batch(common, CONFIGS / "ctr" / "deepfm.yaml", prepared_dir, tmp_path, content_dir)
    settings = yaml.safe_load(common.read_text())
    for section, values in settings.items():
        for key, value in values.items():
            if (section, key) != ("trainer", "enable_model_summary"):
                assert c.config[section][key] == value, (section, key)


def _pipeline(name: str):
    return _parser(run).parse_args(["--config", str(CONFIGS / "pipeline" / f"{name}.yaml")])


def test_protocol_configs_follow_issue_13():
    from pipelines.fit import ConfigText
    from pipelines.tune_stage import TuneStage, tune_monitor

    small = _pipeline("ml-100k")
    names = [m.name for m in small.models]
    assert small.tune == 0  # the README's first command does not tune
    assert {"floor", "deepfm", "dcnv2", "sid_features", "din", "content_features", "poso", "akt"} <= set(
        names
    )
    assert small.seeds == [0, 1, 2]  # AKT ablations run in the ML-1M protocols, not the 10-minute default
    full = _pipeline("ml-1m")
    ablations = {p.stem for p in (CONFIGS / "ctr").glob("akt_*.yaml")}
    assert ablations <= {m.name for m in full.models} and "floor" in {m.name for m in full.models}
    cold = _pipeline("ml-1m-coldstart")
    assert cold.prepare.split.cold_items == 0.1 and cold.prepare.dataset == "ml-1m"
    amazon = _pipeline("amazon-kitchen")
    assert amazon.prepare.dataset == "amazon-food-kitchen" and amazon.prepare.split.mode == "leave_last_out"
    for cfg in (small, full, cold, amazon):
        assert cfg.report.floor in {m.name for m in cfg.models}
    # tuning ranks trials on what the common config selects models by: AUC where GAUC is undefined
    common = [
        ConfigText(Path(p), "", yaml.safe_load((CONFIGS.parent / p).read_text())) for p in amazon.common
    ]
    assert tune_monitor(TuneStage(), common) == "val/auc"
    common = [ConfigText(Path(p), "", yaml.safe_load((CONFIGS.parent / p).read_text())) for p in full.common]
    assert tune_monitor(TuneStage(), common) == "val/gauc_warm"
    assert tune_monitor(TuneStage(monitor="val/gauc"), common) == "val/gauc"
