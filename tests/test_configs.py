"""Every YAML shipped in configs/ parses against the signature it configures, and every model config trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from pipelines.build_semids import build
from pipelines.run import run
from pipelines.train import cli

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


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.name)
def test_model_configs_train_one_batch(path, prepared_dir, tmp_path):
    common = COMMON_CONFIGS[0]
    c = cli(
        [
            "--config", str(common),
            "--config", str(path),
            "--data.data_dir", str(prepared_dir),
            "--trainer.fast_dev_run", "true",
            "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path),
        ],
        run=False,
    )  # fmt: skip
    expected = yaml.safe_load(path.read_text())["model"]
    assert type(c.model).__name__ == expected["class_path"].rsplit(".", 1)[1]
    for key, value in expected.get("init_args", {}).items():
        assert c.model.hparams[key] == value
    c.trainer.fit(c.model, datamodule=c.datamodule)
    assert c.trainer.state.finished
