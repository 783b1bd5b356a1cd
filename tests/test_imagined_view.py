"""Imagined behaviours as a flagged CTR view: the data module serves exactly imagined.parquet's items per user (in
rank order, with their confidences), refuses a bad file before training, and ImaginedDeepFM / ImaginedDIN add one
field that equals the confidence-weighted mean of the imagined item embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ctr.data import CTRDataModule
from ctr.models.imagined import ImaginedDeepFM, ImaginedDIN
from semid import imagine as IM
from semid import schema as S
from semid.errors import InputError
from semid.io import read_meta, write_parquet

pytestmark = pytest.mark.usefixtures("one_thread")

K = 3


def write_imagined(prepared_dir: Path, out: Path, *, k: int = K, seed: int = 0) -> Path:
    """A random imagined.parquet for every other user of `prepared_dir` (rows shuffled, ranks scattered), laid out
    as `semid imagine` writes it (IMAGINED_SCHEMA, the dataset's data_hash in the metadata)."""
    rng = np.random.default_rng(seed)
    n_users = pl.read_parquet(prepared_dir / S.USERS_FILE).height
    n_items = pl.read_parquet(prepared_dir / S.ITEMS_FILE).height
    users = np.arange(0, n_users, 2)
    df = pl.DataFrame(
        {
            S.USER: np.repeat(users, k),
            IM.RANK: np.tile(np.arange(k), users.size),
            S.ITEM: rng.integers(0, n_items, users.size * k),
            IM.CONFIDENCE: rng.uniform(0.05, 1.0, users.size * k),
            IM.IMAGINED: np.ones(users.size * k, dtype=bool),
        },
        schema=IM.IMAGINED_SCHEMA,
    ).sample(fraction=1.0, shuffle=True, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    path = out / IM.IMAGINED_FILE
    write_parquet(df, path, {"data_hash": read_meta(prepared_dir / S.ITEMS_FILE)["data_hash"]})
    return path


@pytest.fixture(scope="module")
def imagined(prepared_dir, tmp_path_factory) -> Path:
    return write_imagined(prepared_dir, tmp_path_factory.mktemp("imagined"))


def _whole_split(dm: CTRDataModule, split: str):
    data = dm.dataset(split)
    return data[torch.arange(len(data))]


@pytest.mark.parametrize("split", ["train", "test"])
def test_batch_carries_the_files_items_in_rank_order(prepared_dir, imagined, split):
    dm = CTRDataModule(str(prepared_dir), imagined=str(imagined.parent))  # the folder works too
    batch = _whole_split(dm, split)
    assert dm.spec.imagined_k == K
    oracle = (
        pl.read_parquet(imagined)
        .sort(S.USER, IM.RANK)
        .group_by(S.USER, maintain_order=True)
        .agg(pl.col(S.ITEM) + 1, pl.col(IM.CONFIDENCE))
    )
    items = {u: i for u, i, _ in oracle.iter_rows()}
    confs = {u: c for u, _, c in oracle.iter_rows()}
    assert batch.imag_item.shape == batch.imag_conf.shape == (batch.user.numel(), K)
    assert batch.imag_item.dtype == torch.int64 and batch.imag_conf.dtype == torch.float32
    seen_with, seen_without = 0, 0
    for row, user in enumerate(batch.user.tolist()):
        if user in items:
            assert batch.imag_item[row].tolist() == items[user]
            np.testing.assert_allclose(batch.imag_conf[row].numpy(), np.asarray(confs[user]), rtol=0, atol=0)
            seen_with += 1
        else:  # users without imagined rows read zeros
            assert not batch.imag_item[row].any() and not batch.imag_conf[row].any()
            seen_without += 1
    assert seen_with and seen_without


def test_without_imagined_nothing_changes(prepared_dir):
    dm = CTRDataModule(str(prepared_dir))
    batch = dm.dataset("val")[torch.arange(4)]
    assert batch.imag_item.numel() == 0 and batch.imag_conf.numel() == 0 and dm.spec.imagined_k == 0
    with pytest.raises(InputError, match="data.imagined"):
        ImaginedDeepFM(dm.spec)


def test_rank_gaps_are_compacted_in_rank_order(prepared_dir, tmp_path):
    meta = {"data_hash": read_meta(prepared_dir / S.ITEMS_FILE)["data_hash"]}
    df = pl.DataFrame(
        {S.USER: [3, 3, 5], IM.RANK: [7, 2, 0], S.ITEM: [10, 11, 12], IM.CONFIDENCE: [0.5, 0.25, 1.0]},
        schema={S.USER: pl.Int32, IM.RANK: pl.Int32, S.ITEM: pl.Int32, IM.CONFIDENCE: pl.Float32},
    )
    write_parquet(df, tmp_path / IM.IMAGINED_FILE, meta)
    dm = CTRDataModule(str(prepared_dir), imagined=str(tmp_path / IM.IMAGINED_FILE))
    dm.setup()
    table = dm.tables.imagined
    assert table.items[3].tolist() == [12, 11] and table.confidence[3].tolist() == [0.25, 0.5]
    assert table.items[5].tolist() == [13, 0] and table.items[4].tolist() == [0, 0]


def _bad(prepared_dir: Path, imagined: Path, tmp_path: Path, change) -> Path:
    df = pl.read_parquet(imagined)
    meta = read_meta(imagined)
    df, meta = change(df, meta)
    path = tmp_path / IM.IMAGINED_FILE
    write_parquet(df, path, meta)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df, m: (df.drop(IM.CONFIDENCE), m), "missing column 'confidence'"),
        (lambda df, m: (df.with_columns(pl.col(S.ITEM) + 10_000), m), "ids unknown to the dataset"),
        (lambda df, m: (df.with_columns(pl.col(S.USER) - 10_000), m), "ids unknown to the dataset"),
        (lambda df, m: (df, {**m, "data_hash": "0" * 64}), "another prepared dataset"),
        (lambda df, m: (pl.concat([df, df.head(1)]), m), r"share one \(user_id, rank\)"),
        (lambda df, m: (df.with_columns(pl.col(IM.CONFIDENCE) * -1), m), "finite and >= 0"),
        (lambda df, m: (df.with_columns(pl.lit(False).alias(IM.IMAGINED)), m), "not flagged imagined"),
    ],
    ids=[
        "no_confidence",
        "item_out_of_range",
        "user_out_of_range",
        "other_dataset",
        "dup_rank",
        "neg",
        "flag",
    ],
)
def test_bad_file_is_one_input_error_before_training(prepared_dir, imagined, tmp_path, change, message):
    path = _bad(prepared_dir, imagined, tmp_path, change)
    dm = CTRDataModule(str(prepared_dir), imagined=str(path))
    with pytest.raises(InputError, match=message) as err:
        dm.setup()
    assert str(path) in str(err.value) and "semid imagine" in str(err.value)


def test_missing_file_is_an_input_error(prepared_dir, tmp_path):
    with pytest.raises(InputError, match="not found"):
        CTRDataModule(str(prepared_dir), imagined=str(tmp_path / "nope.parquet")).setup()


@pytest.mark.parametrize("cls", [ImaginedDeepFM, ImaginedDIN])
def test_extra_field_is_the_confidence_weighted_mean(prepared_dir, imagined, cls):
    dm = CTRDataModule(str(prepared_dir), imagined=str(imagined))
    torch.manual_seed(0)
    net = cls(dm.spec, embed_dim=4).eval()
    assert net.n_fields == net.fields.n_fields + 1
    batch = dm.dataset("val")[torch.arange(3)]
    batch = batch._replace(
        imag_item=torch.tensor([[5, 9, 0], [0, 0, 0], [2, 2, 7]]),
        imag_conf=torch.tensor([[0.5, 0.25, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 2.0]]),
    )
    table = net.fields.item.weight.detach()  # (n_items + 1, d), row i + 1 = item i
    expected = torch.stack(
        [
            (0.5 * table[5] + 0.25 * table[9]) / 0.75,
            torch.zeros(4),  # a user without imagined items: a zero field
            (table[2] + table[2] + 2.0 * table[7]) / 4.0,
        ]
    )
    fields = net.embed(batch)  # (3, F + 1, d)
    assert fields.shape == (3, net.n_fields, 4)
    torch.testing.assert_close(fields[:, -1].detach(), expected)
    # the other fields are the backbone's own
    torch.testing.assert_close(fields[:, :-1], net.fields(batch, pool=net.history_pool))
    # a batch without the view (cold-user ranking) reads a zero field instead of failing
    empty = batch._replace(imag_item=torch.zeros(0, dtype=torch.long), imag_conf=torch.zeros(0))
    assert not net.embed(empty)[:, -1].any()
    out = net(batch)
    assert out.logit.shape == (3,) and torch.isfinite(out.logit).all()
    # the field reaches the logit: other imagined items, another prediction
    moved = net(batch._replace(imag_item=torch.tensor([[6, 9, 0], [0, 0, 0], [2, 2, 7]]))).logit
    assert moved[0] != out.logit[0] and moved[1:].eq(out.logit[1:]).all()
