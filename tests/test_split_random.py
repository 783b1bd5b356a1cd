"""The seeded random split (`split.mode: random`, the Scenario-Wise-Rec protocol): exact fractions, reproducible per
seed, independent of time, and histories that stay strictly before each sample and never read a test label."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from ctr.data import CTRDataModule
from semid import data, synthetic
from semid import schema as S
from semid.errors import InputError

H = 6
RANDOM = data.PrepareConfig(split=data.SplitConfig(mode="random", val_frac=0.1, test_frac=0.1, seed=0))


def _files(raw) -> data.RawFiles:
    return data.RawFiles(raw["inter"], raw["item"], raw["user"])


def _build(raw, cfg: data.PrepareConfig) -> data.Prepared:
    return data.build(_files(raw), synthetic.columns(), cfg, name="synthetic")


@pytest.fixture(scope="module")
def random_prepared(synthetic_raw, tmp_path_factory) -> Path:
    return data.write(_build(synthetic_raw, RANDOM), tmp_path_factory.mktemp("random") / "synthetic")


def _keys(df: pl.DataFrame) -> list[tuple[int, int, int]]:
    return sorted(zip(df[S.USER].to_list(), df[S.ITEM].to_list(), df[S.TIMESTAMP].to_list()))


def test_fractions_partition_and_seed(synthetic_raw):
    a = _build(synthetic_raw, RANDOM)
    n = a.meta["n_interactions"]
    assert {k: v.height for k, v in a.splits.items()} == {
        "train": round(0.8 * n),
        "val": round(0.1 * n),
        "test": n - round(0.8 * n) - round(0.1 * n),
    }
    every = pl.concat(list(a.splits.values()))
    assert every.height == n and every.select(S.USER, S.ITEM, S.TIMESTAMP).n_unique() == every.height
    for df in a.splits.values():  # each split keeps the time order of a temporal one
        assert df[S.TIMESTAMP].is_sorted()
    again = _build(synthetic_raw, RANDOM)
    assert all(a.splits[s].equals(again.splits[s]) for s in S.SPLITS)  # same seed, same rows
    other = _build(synthetic_raw, replace(RANDOM, split=replace(RANDOM.split, seed=1)))
    assert _keys(other.splits["test"]) != _keys(a.splits["test"])
    temporal = _build(synthetic_raw, data.PrepareConfig())
    assert len({a.meta["data_hash"], other.meta["data_hash"], temporal.meta["data_hash"]}) == 3


def test_the_draw_ignores_time(synthetic_raw):
    """Not a time cut: val / test rows come from every period, in about their share of it."""
    p = _build(synthetic_raw, RANDOM)
    ts = pl.concat(list(p.splits.values()))[S.TIMESTAMP]
    cuts = ts.quantile(0.25), ts.quantile(0.5), ts.quantile(0.75)
    for split in ("val", "test"):
        t = p.splits[split][S.TIMESTAMP].to_numpy()
        quarters = np.histogram(t, bins=[-np.inf, *cuts, np.inf])[0] / t.size  # (4,)
        assert np.all(np.abs(quarters - 0.25) < 0.08), (split, quarters)
    assert p.splits["train"][S.TIMESTAMP].max() > p.splits["test"][S.TIMESTAMP].min()


def test_cold_items_and_bad_fractions_still_apply(synthetic_raw):
    cold = replace(RANDOM, split=replace(RANDOM.split, cold_items=0.1))
    p = _build(synthetic_raw, cold)
    held = p.meta["held_out_items"]
    assert held and not p.splits["train"][S.ITEM].is_in(held).any()
    assert p.splits["test"][S.ITEM].is_in(held).any()
    with pytest.raises(InputError, match="bad split fractions"):
        _build(synthetic_raw, replace(RANDOM, split=replace(RANDOM.split, val_frac=0.5, test_frac=0.5)))


def _oracle(past: pl.DataFrame, user: int, ts: int) -> list[int]:
    """item + 1 of the user's last H positives of `past` strictly before ts, most recent first (ties: larger id)."""
    rows = past.filter((pl.col(S.USER) == user) & (pl.col(S.LABEL) == 1) & (pl.col(S.TIMESTAMP) < ts))
    got = rows.sort([S.TIMESTAMP, S.ITEM], descending=True)[S.ITEM].head(H).to_list()
    return [i + 1 for i in got] + [0] * (H - len(got))


@pytest.mark.parametrize("split", S.SPLITS)
def test_history_stays_before_the_sample_and_never_reads_test(random_prepared, split):
    """With a random split a test row can have later train rows: the history still holds only positives strictly
    before the sample, from train (train rows) or train + val (val / test rows); never a test row."""
    dm = CTRDataModule(str(random_prepared), batch_size=4096, eval_batch_size=4096, history_len=H)
    hist = np.concatenate([b.hist_item.numpy() for b in dm.loader(split, shuffle=False)])  # (N, H)
    parts = {s: pl.read_parquet(random_prepared / S.split_file(s)) for s in S.SPLITS}
    rows = parts[split]
    past = parts["train"] if split == "train" else pl.concat([parts["train"], parts["val"]])
    want = [_oracle(past, u, t) for u, t in rows.select(S.USER, S.TIMESTAMP).iter_rows()]
    assert hist.tolist() == want
    if split == "test":
        later_train = rows.join(parts["train"], on=S.USER, suffix="_tr").filter(
            pl.col(f"{S.TIMESTAMP}_tr") > pl.col(S.TIMESTAMP)
        )
        assert later_train.height > 0  # the case the random split adds is exercised
        assert (hist > 0).any(1).mean() > 0.5  # and most test rows do have a history
