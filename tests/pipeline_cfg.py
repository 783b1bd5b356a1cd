"""The small `semid run` configuration the pipeline-stage tests share (tiny encoder, 2-level RQ-VAEs, one-epoch
fits on the synthetic data): the config files and the mapping each test extends with its own stage section."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

RQ = {"levels": 2, "codebook_size": 4, "max_epochs": 5, "batch_size": 32, "min_level0_utilization": 0.0}
COLUMNS = {
    "item_text_template": "{title}. Genres: {genre}.",
    "item_features": ["genre"],
    "multi_valued": ["genre"],
    "user_features": ["age", "gender"],
}
COMMON = {
    "model": {"monitor": "val/auc"},
    "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
    "data": {"batch_size": 512, "history_len": 4},
}


def write_files(root: Path, tiny_bert_dir: Path, nets: Mapping[str, Any], common: Mapping = COMMON) -> None:
    """semid.yaml (the tiny encoder), common.yaml and one `<name>.yaml` per network ({"class_path", "init_args"})."""
    semid = {
        "encoder": {"model": str(tiny_bert_dir), "batch_size": 32, "max_length": 32},
        "align_config": {"max_epochs": 1, "max_pairs": 200, "batch_size": 64, "user_max_length": 32},
        "item_rqvae": RQ,
        "user_rqvae": RQ,
    }
    (root / "semid.yaml").write_text(yaml.safe_dump(semid))
    (root / "common.yaml").write_text(yaml.safe_dump(dict(common)))
    for name, net in nets.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump({"model": {"net": net}}))


def synthetic_prepare(root: Path, synthetic_raw: Mapping[str, Path]) -> dict[str, Any]:
    """The `prepare:` section for the conftest's synthetic raw files (writes their column mapping)."""
    (root / "columns.yaml").write_text(yaml.safe_dump(COLUMNS))
    return {
        "dataset": None,
        "interactions": str(synthetic_raw["inter"]),
        "items": str(synthetic_raw["item"]),
        "users": str(synthetic_raw["user"]),
        "columns": str(root / "columns.yaml"),
    }


def pipeline(
    name: str, root: Path, prepare: Mapping, models: Iterable[str], target: str, **stages: Any
) -> dict:
    """The pipeline mapping: one seed, no floor, `_root` = where `write` puts it."""
    return {
        "name": name,
        "prepare": dict(prepare),
        **stages,
        "semids": str(root / "semid.yaml"),
        "common": [str(root / "common.yaml")],
        "models": [{"name": n, "config": str(root / f"{n}.yaml")} for n in models],
        "seeds": [0],
        "target": target,
        "report": {"floor": None},
        "_root": str(root),
    }


def write(cfg: Mapping[str, Any], name: str) -> Path:
    """The mapping as `<_root>/<name>` (without `_root`)."""
    path = Path(cfg["_root"]) / name
    path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "_root"}))
    return path
