"""Beyond-log behaviours (ReaSeq, arXiv 2512.21257, second part, scaled down): a masked discrete-diffusion model
over users' semantic-ID sequences imagines K behaviours for short-history users.

    sequences  train positives -> item code tuples, training windows, histories, the catalogue's prefix tree
    model      SIDDiffusion: bidirectional transformer over item slots, hierarchical per-level heads
    train      random-ratio masking, the 1/t-weighted masked-slot loss, a plain seeded training loop
    generate   K appended masked slots unmasked most-confident-first; popularity and random baselines
    evaluate   level-1 semantic consistency and exact hit rate against the user's next true behaviours

`imagine_behaviours` composes them on a prepared dataset and its item ID table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import polars as pl
import torch

from semid import schema as S
from semid.data import Prepared
from semid.imagine.evaluate import compare, consistency, future_positives, markdown
from semid.imagine.generate import Imagined, imagine, popularity_baseline, random_baseline
from semid.imagine.model import ModelConfig, SIDDiffusion
from semid.imagine.sequences import (
    ItemCodes,
    PrefixTree,
    histories,
    item_codes,
    positive_counts,
    prefix_tree,
    seen,
    training_windows,
)
from semid.imagine.train import TrainConfig, TrainResult, diffusion_loss, fit, mask_slots

IMAGINED_FILE = "imagined.parquet"
IMAGINE_MODEL_FILE = "imagine_model.pt"
CONSISTENCY_FILE = "consistency.json"
IMAGINED = "imagined"  # Boolean flag column: True on every row of imagined.parquet
RANK = "rank"  # 0..K-1: the imagined slot's position after the user's history
CONFIDENCE = "confidence"  # model probability of the item's code tuple when its slot was unmasked
IMAGINED_SCHEMA = pl.Schema(
    {S.USER: pl.Int32, RANK: pl.Int32, S.ITEM: pl.Int32, CONFIDENCE: pl.Float32, IMAGINED: pl.Boolean}
)


@dataclass
class ImagineConfig:
    k: int = 5
    """Behaviours imagined per user."""
    steps: int | None = None
    """Unmasking steps (None: k, one slot per step)."""
    max_history: int = 5
    """Imagine for users with at most this many train positives (the ones short of history)."""
    all_users: bool = False
    """Imagine for every user instead."""
    beam: int | None = None
    """Score each slot's items by a beam search keeping this many prefixes per level (None: exact, every item).
    Needed on a large catalogue: exact scoring costs slots x distinct prefixes per level."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ImagineResult(NamedTuple):
    imagined: pl.DataFrame  # IMAGINED_SCHEMA, sorted by user, rank
    model: SIDDiffusion
    losses: list[float]
    comparison: pl.DataFrame  # evaluate.RESULT_COLUMNS: diffusion, popularity, random on the imagined users
    methods: dict[str, pl.DataFrame]  # name -> its (user_id, rank, item_id, ...) frame, for other breakdowns


def imagine_behaviours(
    prepared: Prepared, table: pl.DataFrame, sizes: list[int], cfg: ImagineConfig
) -> ImagineResult:
    """Train the model on the train positives, imagine `cfg.k` behaviours for the selected users, and compare
    their consistency with the popularity and random baselines (on those users that have val/test positives)."""
    train = prepared.splits["train"]
    n_items = int(prepared.items[S.ITEM].max()) + 1
    catalogue = item_codes(table, n_items, train, sizes)
    tree = prefix_tree(catalogue.codes)
    windows = training_windows(train, catalogue.known, cfg.model.max_len)
    result = fit(windows, catalogue.codes, catalogue.sizes, cfg.model, cfg.train)

    counts = positive_counts(train, prepared.users)
    chosen = counts if cfg.all_users else counts.filter(pl.col("n_positives") <= cfg.max_history)
    users = chosen[S.USER].to_numpy()
    history = histories(train, users, catalogue.known, cfg.model.max_len - cfg.k)
    exclude = seen(train, users, n_items)
    out = imagine(result.model, history, exclude, catalogue, tree, k=cfg.k, steps=cfg.steps, beam=cfg.beam)

    imagined = imagined_frame(users, out.items, out.confidence)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    methods = {
        "diffusion": imagined,
        "popularity": imagined_frame(users, popularity_baseline(exclude, catalogue, cfg.k)),
        "random": imagined_frame(users, random_baseline(exclude, catalogue, cfg.k, generator)),
    }
    comparison = compare(methods, future_positives(prepared.splits), table)
    return ImagineResult(imagined, result.model, result.losses, comparison, methods)


def imagined_frame(
    users: np.ndarray, items: torch.Tensor, confidence: torch.Tensor | None = None
) -> pl.DataFrame:
    """Imagined items (U, K) of `users` as a frame of IMAGINED_SCHEMA (confidence null for a baseline)."""
    u, k = items.shape
    return pl.DataFrame(
        {
            S.USER: np.repeat(users, k),
            RANK: np.tile(np.arange(k), u),
            S.ITEM: items.reshape(-1).numpy(),
            CONFIDENCE: [None] * (u * k) if confidence is None else confidence.reshape(-1).numpy(),
            IMAGINED: np.ones(u * k, dtype=bool),
        },
        schema=IMAGINED_SCHEMA,
    )


__all__ = [
    "CONFIDENCE",
    "CONSISTENCY_FILE",
    "IMAGINED",
    "IMAGINED_FILE",
    "IMAGINED_SCHEMA",
    "IMAGINE_MODEL_FILE",
    "RANK",
    "ImagineConfig",
    "ImagineResult",
    "Imagined",
    "ItemCodes",
    "ModelConfig",
    "PrefixTree",
    "SIDDiffusion",
    "TrainConfig",
    "TrainResult",
    "compare",
    "consistency",
    "diffusion_loss",
    "fit",
    "future_positives",
    "histories",
    "imagine",
    "imagine_behaviours",
    "imagined_frame",
    "item_codes",
    "markdown",
    "mask_slots",
    "popularity_baseline",
    "positive_counts",
    "prefix_tree",
    "random_baseline",
    "seen",
    "training_windows",
]
