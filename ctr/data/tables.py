"""`load_tables`: a prepared dataset directory and its optional side tables -> `Tables` of tensors, validated."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ctr.batch import NO_CODES
from ctr.data.arrays import SplitArrays, Tables
from ctr.data.history import HISTORY_SOURCES, build_history, history_end
from ctr.data.readers import (
    entity_arrays,
    read_content,
    read_entities,
    read_imagined,
    read_scenarios,
    read_sids,
    read_source_history,
    read_split,
    require_file,
)
from semid import schema as S
from semid.errors import InputError
from semid.io import read_meta


def load_tables(
    data_dir: str | Path,
    *,
    item_sids: str | Path | None = None,
    user_sids: str | Path | None = None,
    max_tokens_per_feature: int = 8,
    item_content: str | Path | None = None,
    user_content: str | Path | None = None,
    scenarios: str | Path | None = None,
    source_history: str | Path | None = None,
    imagined: str | Path | None = None,
    train_splits: Sequence[str] = ("train",),
) -> Tables:
    """Validate and read a prepared dataset directory and its ID tables into tensors (and, given `imagined`, the
    users' imagined behaviours of `semid imagine`: `ctr.data.readers.read_imagined`).

    `train_splits`: the splits whose rows form `Tables.splits["train"]` (the rows a fit trains on), concatenated in
    that order; ("train", "val") is the refit on train + val of `semid run --refit_train_val`. Their history is the
    positives of every split that is a history source of one of them (`HISTORY_SOURCES`; train + val for train +
    val), still strictly before each row, so a val row trains with the very history it is validated with, and a
    train row may see a val positive that came before it (possible under a random or leave-last-out split, never
    under the temporal one). The other splits' arrays, and every entity's train counts and activity buckets (computed
    by `semid prepare` from the train split), are unchanged.
    """
    check_train_splits(train_splits)
    root = Path(data_dir)
    fix = "run `semid prepare` first, or point data_dir to its output directory"
    if not root.is_dir():
        raise InputError("prepared dataset directory not found", file=root, fix=fix)
    items_path = require_file(root / S.ITEMS_FILE, fix)
    users_path = require_file(root / S.USERS_FILE, fix)
    split_paths = {s: require_file(root / S.split_file(s), fix) for s in S.SPLITS}
    items = read_entities(items_path, S.ITEM)
    users = read_entities(users_path, S.USER)
    raw_items = items[S.RAW_ITEM] if S.RAW_ITEM in items.columns else pl.Series([], dtype=pl.String)
    raw_users = users[S.RAW_USER] if S.RAW_USER in users.columns else pl.Series([], dtype=pl.String)
    splits = {s: read_split(p, s, users.height, items.height) for s, p in split_paths.items()}
    # the prepared dataset's fingerprint: an ID table built from another dataset (same counts or not) is refused
    data_hash = read_meta(items_path).get("data_hash")
    sides = (
        (S.ITEM, items, raw_items, item_sids, S.ITEM_SIDS_FILE, item_content, S.ITEM_EMB_FILE),
        (S.USER, users, raw_users, user_sids, S.USER_SIDS_FILE, user_content, S.USER_EMB_FILE),
    )
    sids = {
        key: read_sids(path, key=key, n=df.height, raw=raw, default_file=file, data_hash=data_hash)
        for key, df, raw, path, file, _, _ in sides
    }
    contents = {
        key: read_content(path, key=key, n=df.height, default_file=file, data_hash=data_hash)
        for key, df, _, _, _, path, file in sides
    }

    scenario_codes = (
        None
        if scenarios is None
        else read_scenarios(scenarios, n_users=users.height, n_items=items.height, data_hash=data_hash)
    )
    source = (
        None
        if source_history is None
        else read_source_history(
            source_history, n_users=users.height, n_items=items.height, data_hash=data_hash
        )
    )
    imagined_items = (
        None
        if imagined is None
        else read_imagined(imagined, n_users=users.height, n_items=items.height, data_hash=data_hash)
    )
    train_sources = tuple(s for s in S.SPLITS if any(s in HISTORY_SOURCES[t] for t in train_splits))
    by_sources = {
        sources: build_history(
            pl.concat([splits[s] for s in sources], how="vertical_relaxed"), users.height, source
        )
        for sources in {*HISTORY_SOURCES.values(), train_sources}
    }
    histories = {split: by_sources[HISTORY_SOURCES[split]] for split in splits}
    histories["train"] = by_sources[train_sources]
    rows = {**splits, "train": pl.concat([splits[s] for s in train_splits], how="vertical_relaxed")}
    arrays = {}
    for split, df in rows.items():
        user = torch.from_numpy(df[S.USER].cast(pl.Int64).to_numpy().copy())
        item = torch.from_numpy(df[S.ITEM].cast(pl.Int64).to_numpy().copy())
        end = history_end(histories[split], user.numpy(), df[S.TIMESTAMP].cast(pl.Int64).to_numpy())
        if scenario_codes is None:
            scenario = NO_CODES
        else:
            scenario = scenario_codes.codes[user if scenario_codes.key == S.USER else item]  # (N,)
        arrays[split] = SplitArrays(
            user=user,
            item=item,
            label=torch.from_numpy(df[S.LABEL].cast(pl.Float32).to_numpy().copy()),
            hist_end=torch.from_numpy(end.astype(np.int64)),
            scenario=scenario,
        )
    return Tables(
        items=entity_arrays(items, items_path, max_tokens_per_feature, sids[S.ITEM], contents[S.ITEM]),
        users=entity_arrays(users, users_path, max_tokens_per_feature, sids[S.USER], contents[S.USER]),
        histories=histories,
        splits=arrays,
        scenarios=scenario_codes,
        data_hash=data_hash,
        merged_source=source is not None,
        imagined=imagined_items,
    )


TRAINABLE_SPLITS = ("train", "val")
"""Splits whose rows a fit may train on (`train_splits`); the test split never is."""


def check_train_splits(train_splits: Sequence[str]) -> None:
    """InputError unless `train_splits` is train, optionally followed by val (no test, no repeats)."""
    if (
        not train_splits
        or train_splits[0] != "train"
        or len(set(train_splits)) != len(train_splits)
        or not set(train_splits) <= set(TRAINABLE_SPLITS)
    ):
        raise InputError(
            f"train_splits={list(train_splits)}",
            fix="set data.train_splits to [train] (the default) or [train, val] (refit on train + val); "
            "the test split is never trained on",
        )
