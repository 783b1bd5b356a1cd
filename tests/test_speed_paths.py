"""The fast paths of a fit keep its results: `index_select` batches equal advanced indexing field by field, the
train losses are logged only on the steps the loggers write (same files), and a `Batch` moves to the device
without Lightning's generic walk."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import lightning.pytorch.core.hooks as lightning_hooks
import numpy as np
import polars as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from ctr.batch import NO_CODES, Batch
from ctr.data.loader import SplitData, take
from ctr.models import DeepFM
from ctr.module import CTRTask
from semid import schema as S
from semid.io import write_parquet
from tests.test_ctr_data import DATA_HASH, N_ITEMS, make_prepared, module
from tests.test_models import SPEC, loader, make_batch


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("prepared"))


def indexed_batch(data: SplitData, idx: torch.Tensor) -> Batch:
    """The batch by plain advanced indexing (the loader's earlier implementation): the oracle."""
    t, a = data.tables, data.arrays
    user, item = a.user[idx], a.item[idx]
    history = t.histories[data.split]
    pos = a.hist_end[idx][:, None] - 1 - torch.arange(data.history_len)  # (B, H)
    slots = torch.where(pos >= history.user_start[user][:, None], pos + 1, 0)  # (B, H)
    hist = history.items[slots]
    hist_idx, real = (hist - 1).clamp(min=0), hist > 0
    return Batch(
        user=user,
        item=item,
        label=a.label[idx],
        user_sid=t.users.sid.codes[user],
        item_sid=t.items.sid.codes[item],
        user_count=t.users.count[user],
        item_count=t.items.count[item],
        user_feats=t.users.feats.tokens[user],
        item_feats=t.items.feats.tokens[item],
        hist_item=hist,
        hist_item_sid=t.items.sid.codes[hist_idx] * real.unsqueeze(-1),
        hist_item_count=t.items.count[hist_idx] * real,
        user_bucket=t.users.bucket[user],
        item_bucket=t.items.bucket[item],
        user_content=t.users.content[user],
        item_content=t.items.content[item],
        scenario=a.scenario[idx] if a.scenario.numel() else NO_CODES,
        hist_type=history.types[slots] if t.merged_source else NO_CODES,
    )


def test_take_is_advanced_indexing() -> None:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(9, 3, 2, generator=g)
    for shape in ((5,), (4, 6), (0,), (3, 0)):
        index = torch.randint(0, 9, shape, generator=g)
        got = take(table, index)
        assert got.shape == table[index].shape and torch.equal(got, table[index])


def test_batches_equal_advanced_indexing_field_by_field(prepared: Path, tmp_path: Path) -> None:
    """Every field, dtype and shape, with content vectors, scenarios and a merged source history loaded (the
    optional fields are served too), on shuffled and on padded (short-history) rows."""
    emb = pl.DataFrame(
        {S.ITEM: np.arange(N_ITEMS), S.EMBEDDING: np.random.default_rng(0).normal(size=(N_ITEMS, 4))}
    )
    emb = emb.with_columns(pl.col(S.EMBEDDING).cast(pl.List(pl.Float32)))
    write_parquet(emb, tmp_path / S.ITEM_EMB_FILE, {"data_hash": DATA_HASH})
    src = pl.DataFrame(
        {S.USER: [0, 1], S.ITEM: [3, N_ITEMS - 1], S.TIMESTAMP: [5, 0]},
        schema={S.USER: pl.Int32, S.ITEM: pl.Int32, S.TIMESTAMP: pl.Int64},
    )
    write_parquet(src, tmp_path / "source_history.parquet", {"data_hash": DATA_HASH})
    dm = module(prepared, item_content=str(tmp_path), source_history=str(tmp_path), history_len=6)
    g = torch.Generator().manual_seed(1)
    for split in S.SPLITS:
        data = dm.dataset(split)
        idx = torch.randperm(len(data), generator=g)[: max(len(data) - 2, 1)]
        got, want = data[idx], indexed_batch(data, idx)
        assert got.item_content.shape == (idx.numel(), 4) and got.hist_type.shape == (idx.numel(), 6)
        for field in Batch._fields:
            a, b = getattr(got, field), getattr(want, field)
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (split, field)


def fit_and_read_log(tmp_path: Path, name: str, every_step: bool, monkeypatch) -> tuple[list[dict], int]:
    """Fit 7 steps with log_every_n_steps=3; the CSV log's train rows and how often train/loss was logged."""
    calls = []
    original = CTRTask.log

    def spy(self, key, *args, **kwargs):
        calls.append(key)
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(CTRTask, "log", spy)
    if every_step:  # the earlier behaviour: hand the losses to Lightning on every step
        monkeypatch.setattr(CTRTask, "_loggers_write_this_step", lambda self: True)
    L.seed_everything(0)
    task = CTRTask(DeepFM, SPEC, lr=1e-2)
    trainer = L.Trainer(
        max_epochs=1,
        log_every_n_steps=3,
        logger=CSVLogger(tmp_path, name=name, version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(task, train_dataloaders=loader(7))
    with open(tmp_path / name / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    monkeypatch.undo()
    return rows, calls.count("train/loss")


def test_train_losses_are_logged_only_on_written_steps_and_the_log_is_unchanged(
    tmp_path: Path, monkeypatch
) -> None:
    rows, calls = fit_and_read_log(tmp_path, "fast", every_step=False, monkeypatch=monkeypatch)
    every_rows, every_calls = fit_and_read_log(tmp_path, "every", every_step=True, monkeypatch=monkeypatch)
    assert every_calls == 7 and calls == 2  # steps 2 and 5 of 0..6 are the written ones
    assert [r["step"] for r in rows] == ["2", "5"]
    assert rows == every_rows  # the same steps with the same values


def test_a_batch_moves_without_lightnings_generic_walk(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("Lightning's move_data_to_device walked the Batch")

    monkeypatch.setattr(lightning_hooks, "move_data_to_device", refuse)
    batch = make_batch()
    task = CTRTask(DeepFM, SPEC)
    moved = task.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert isinstance(moved, Batch)
    assert all(torch.equal(a, b) for a, b in zip(moved, batch, strict=True))
    with pytest.raises(AssertionError, match="walked"):  # anything else still takes Lightning's path
        task.transfer_batch_to_device({"x": torch.zeros(1)}, torch.device("cpu"), 0)
