"""Seeded synthetic recommender data with cluster structure, written as raw files `prepare` reads.

Items belong to latent topics (their text and genres name the topic), users prefer a few topics, item popularity is
Zipf-like so there are real head and tail items, and a click is a Bernoulli draw of user-topic affinity. Small
versions feed the tests; large ones feed the scaling benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from semid.datasets import Columns

_WORDS = [
    "space", "robot", "love", "war", "crime", "ghost", "music", "sport", "family", "magic",
    "ocean", "desert", "city", "history", "spy", "school", "animal", "future", "king", "road",
]  # fmt: skip


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 200
    n_items: int = 120
    n_interactions: int = 6000
    n_topics: int = 6
    zipf: float = 1.1
    seed: int = 0


def generate(cfg: SyntheticConfig) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(interactions, items, users) frames with raw string ids and a rating in 1..5."""
    rng = np.random.default_rng(cfg.seed)
    item_topic = rng.integers(0, cfg.n_topics, cfg.n_items)
    user_pref = rng.dirichlet(np.full(cfg.n_topics, 0.3), cfg.n_users)  # (U, T)
    popularity = 1.0 / np.arange(1, cfg.n_items + 1) ** cfg.zipf
    popularity = popularity[rng.permutation(cfg.n_items)]
    users = rng.integers(0, cfg.n_users, cfg.n_interactions)
    items = rng.choice(cfg.n_items, cfg.n_interactions, p=popularity / popularity.sum())
    affinity = user_pref[users, item_topic[items]] * cfg.n_topics  # mean 1
    p_click = 1.0 / (1.0 + np.exp(-(2.0 * affinity - 1.5)))
    rating = np.where(rng.random(cfg.n_interactions) < p_click, rng.integers(4, 6, cfg.n_interactions), 2)
    timestamp = np.sort(rng.integers(1_000_000, 2_000_000, cfg.n_interactions))
    inter = pl.DataFrame(
        {
            "user_id": [f"u{u}" for u in users],
            "item_id": [f"i{i}" for i in items],
            "rating": rating.astype(np.float64),
            "timestamp": timestamp,
        }
    )
    words = np.array(_WORDS)
    w1 = words[item_topic % len(_WORDS)]
    w2 = words[(item_topic * 7 + 3) % len(_WORDS)]
    serial = rng.integers(1, 99, cfg.n_items)
    items_df = pl.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(cfg.n_items)],
            "title": [f"The {a} of {b} {s}" for a, b, s in zip(w1, w2, serial)],
            "genre": [f"{a} {b}" for a, b in zip(w1, w2)],
        }
    )
    users_df = pl.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(cfg.n_users)],
            "age": rng.choice(["18-24", "25-34", "35-44"], cfg.n_users),
            "gender": rng.choice(["male", "female"], cfg.n_users),
        }
    )
    return inter, items_df, users_df


def columns() -> Columns:
    """The column mapping of `generate`'s files."""
    return Columns(
        item_text_template="{title}. Genres: {genre}.",
        item_features=["genre"],
        multi_valued=["genre"],
        user_features=["age", "gender"],
    )


def write(cfg: SyntheticConfig, directory: str | Path, fmt: str = "parquet") -> dict[str, Path]:
    """Write the three raw files (parquet or csv) and return {inter, item, user} -> path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for role, df in zip(("inter", "item", "user"), generate(cfg)):
        path = directory / f"{role}.{fmt}"
        df.write_parquet(path) if fmt == "parquet" else df.write_csv(path)
        out[role] = path
    return out
