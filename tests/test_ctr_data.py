"""ctr.data on a tiny prepared directory: batches, epochs, shuffling, history oracle, vocabularies, errors, DDP shards."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import polars as pl
import pytest
import torch

from ctr.batch import Batch
from ctr.data import CTRDataModule, IndexBatches
from semid import schema as S
from semid.errors import InputError
from semid.ids import table_meta, write_table
from semid.io import read_meta, write_parquet

N_USERS, N_ITEMS, H = 7, 15, 4
DATA_HASH = "prepared-h"


def sid_meta(key: str, sizes: list[int], data_hash: str = DATA_HASH) -> dict:
    return table_meta(key=key, codebook_sizes=sizes, health={}, encoder="test", seed=0, data_hash=data_hash)


GENRES = ["drama", "comedy", "action", "sci-fi", "noir"]


def make_prepared(root: Path, *, seed: int = 0) -> Path:
    """A prepared dataset: unique (user, item) pairs per split, timestamps with many ties, one cold item."""
    rng = np.random.default_rng(seed)
    pairs = rng.permutation(N_USERS * (N_ITEMS - 1))  # item N_ITEMS - 1 never interacts (cold)
    user, item = pairs // (N_ITEMS - 1), pairs % (N_ITEMS - 1)
    ts = rng.integers(0, 12, pairs.size)  # few distinct timestamps -> ties in the history
    label = (rng.random(pairs.size) < 0.5).astype(np.int8)
    inter = pl.DataFrame(
        {
            S.USER: user.astype(np.int32),
            S.ITEM: item.astype(np.int32),
            S.LABEL: label,
            S.TIMESTAMP: ts.astype(np.int64),
            S.RATING: rng.random(pairs.size).astype(np.float32),
        },
        schema=S.INTERACTIONS,
    )
    n = inter.height
    parts = {
        "train": inter[: int(n * 0.6)],
        "val": inter[int(n * 0.6) : int(n * 0.8)],
        "test": inter[int(n * 0.8) :],
    }
    for split, df in parts.items():
        write_parquet(df, root / S.split_file(split), {"split": split})
    train = parts["train"]
    genre = [[GENRES[(i + k) % 5] for k in range(i % 4)] for i in range(N_ITEMS)]  # 0..3 tokens, one empty
    genre[5] = None
    tags = [[f"t{j:02d}" for j in range(i)] for i in range(N_ITEMS)]  # up to 14 tokens: truncated to 3
    items = pl.DataFrame(
        {
            S.ITEM: np.arange(N_ITEMS, dtype=np.int32)[::-1],  # stored out of order on purpose
            S.RAW_ITEM: [f"m{i}" for i in range(N_ITEMS)][::-1],
            S.TEXT: [f"movie {i}" for i in range(N_ITEMS)][::-1],
            S.TRAIN_COUNT: [train.filter(pl.col(S.ITEM) == i).height for i in range(N_ITEMS)][::-1],
            S.BUCKET: [
                ["head", "torso", "tail"][i % 3] if i < N_ITEMS - 1 else "cold" for i in range(N_ITEMS)
            ][::-1],
            "genre": genre[::-1],
            "tags": tags[::-1],
            "not_a_feature": [["x"]] * N_ITEMS,
        },
        schema_overrides={"genre": S.FEATURE_DTYPE, "tags": S.FEATURE_DTYPE},
    )
    write_parquet(items, root / S.ITEMS_FILE, {"features": ["genre", "tags"], "data_hash": DATA_HASH})
    users = pl.DataFrame(
        {
            S.USER: np.arange(N_USERS, dtype=np.int32),
            S.RAW_USER: [f"u{u}" for u in range(N_USERS)],
            S.TEXT: [""] * N_USERS,
            S.TRAIN_COUNT: [train.filter(pl.col(S.USER) == u).height for u in range(N_USERS)],
            S.BUCKET: [S.BUCKETS[u % 3] for u in range(N_USERS)],
            "gender": [["f"] if u % 2 else ["m"] for u in range(N_USERS)],
        }
    )
    write_parquet(users, root / S.USERS_FILE, {})  # no "features" key: every List(String) column is one
    item_sids = pl.DataFrame(
        {S.ITEM: np.arange(N_ITEMS), "sid_0": np.arange(N_ITEMS) % 4, "sid_1": np.arange(N_ITEMS) % 5,
         "sid_2": np.arange(N_ITEMS) % 3, S.SID_DEDUP: np.zeros(N_ITEMS)},
        schema=S.sid_schema(S.ITEM, 3),
    )  # fmt: skip
    (root / "sids").mkdir(parents=True, exist_ok=True)
    write_table(item_sids.reverse(), root / "sids" / S.ITEM_SIDS_FILE, sid_meta(S.ITEM, [4, 5, 6]))
    user_sids = pl.DataFrame(
        {S.USER: np.arange(N_USERS), "sid_0": np.arange(N_USERS) % 2, "sid_1": np.arange(N_USERS) % 3,
         S.SID_DEDUP: np.arange(N_USERS) // 6},
        schema=S.sid_schema(S.USER, 2),
    )  # fmt: skip
    write_table(user_sids, root / "sids" / S.USER_SIDS_FILE, sid_meta(S.USER, [2, 3]))
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("prepared"))


def module(root: Path, **overrides) -> CTRDataModule:
    args = dict(
        data_dir=str(root),
        item_sids=str(root / "sids" / S.ITEM_SIDS_FILE),
        user_sids=str(root / "sids"),  # a directory: its user_sids.parquet
        batch_size=16,
        eval_batch_size=10,
        history_len=H,
        max_tokens_per_feature=3,
    )
    return CTRDataModule(**{**args, **overrides})


def collect(loader) -> list[Batch]:
    return list(loader)


def cat(batches: list[Batch], field: str) -> torch.Tensor:
    return torch.cat([getattr(b, field) for b in batches])


def split_rows(root: Path, split: str) -> pl.DataFrame:
    return pl.read_parquet(root / S.split_file(split))


def test_batch_shapes_dtypes_and_spec(prepared: Path) -> None:
    dm = module(prepared)
    spec = dm.spec  # works before any trainer exists
    assert (spec.n_users, spec.n_items, spec.history_len) == (N_USERS, N_ITEMS, H)
    assert spec.item_feature_names == ("genre", "tags") and spec.user_feature_names == ("gender",)
    assert spec.item_feature_vocab == (len(GENRES) + 1, N_ITEMS - 1 + 1) and spec.user_feature_vocab == (3,)
    assert spec.item_sid_sizes == (4, 5, 6)  # from the metadata
    assert spec.user_sid_sizes == (2, 3)
    train = split_rows(prepared, "train")
    assert spec.item_count_max == train[S.ITEM].value_counts()["count"].max()
    b = next(iter(dm.train_dataloader()))
    assert isinstance(b, Batch)
    B = 16
    expected = {
        "user": (B,), "item": (B,), "label": (B,), "user_sid": (B, 2), "item_sid": (B, 3), "user_count": (B,),
        "item_count": (B,), "user_feats": (B, 1, 1), "item_feats": (B, 2, 3), "hist_item": (B, H),
        "hist_item_sid": (B, H, 3), "hist_item_count": (B, H), "user_bucket": (B,), "item_bucket": (B,),
    }  # fmt: skip
    for field, shape in expected.items():
        value = getattr(b, field)
        assert tuple(value.shape) == shape, field
        assert value.dtype == (
            torch.float32
            if field in ("label", "user_count", "item_count", "hist_item_count")
            else torch.int64
        ), field
    assert torch.equal(b.item_sid, torch.stack([b.item % 4, b.item % 5, b.item % 3], 1))
    assert torch.equal(b.user_sid, torch.stack([b.user % 2, b.user % 3], 1))
    assert torch.equal(b.item_bucket, torch.where(b.item == N_ITEMS - 1, 3, b.item % 3))
    assert torch.equal(b.user_bucket, b.user % 3)
    counts = train[S.USER].value_counts()
    assert torch.equal(
        b.user_count, torch.tensor([dict(counts.iter_rows()).get(int(u), 0) for u in b.user]).float()
    )


def test_id_only_without_sid_tables(prepared: Path) -> None:
    dm = module(prepared, item_sids=None, user_sids=None)
    assert dm.spec.item_sid_sizes == (1,) and dm.spec.user_sid_sizes == (1,)
    b = next(iter(dm.val_dataloader()))
    assert b.item_sid.shape == (10, 1) and int(b.item_sid.abs().sum()) == 0


def test_every_sample_once_per_epoch_and_seeded_shuffle(prepared: Path) -> None:
    dm = module(prepared, seed=3)
    loader = dm.train_dataloader()
    train = split_rows(prepared, "train")
    want = Counter(zip(train[S.USER].to_list(), train[S.ITEM].to_list(), train[S.LABEL].to_list()))
    orders = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)  # what Lightning does at every epoch start
        batches = collect(loader)
        assert len(batches) == len(loader) == -(-train.height // 16)
        got = Counter(
            zip(
                cat(batches, "user").tolist(),
                cat(batches, "item").tolist(),
                cat(batches, "label").int().tolist(),
            )
        )
        assert got == want  # every sample exactly once (pairs are unique)
        orders.append(cat(batches, "item"))
    assert not torch.equal(orders[0], orders[1])  # a new order each epoch
    again = module(prepared, seed=3).train_dataloader()
    again.sampler.set_epoch(1)
    assert torch.equal(cat(collect(again), "item"), orders[1])  # reproducible with the seed
    other = module(prepared, seed=4).train_dataloader()
    other.sampler.set_epoch(1)
    assert not torch.equal(cat(collect(other), "item"), orders[1])
    # eval is file order
    val = split_rows(prepared, "val")
    assert cat(collect(dm.val_dataloader()), "item").tolist() == val[S.ITEM].to_list()
    assert (
        cat(collect(dm.predict_dataloader()), "item").tolist()
        == split_rows(prepared, "test")[S.ITEM].to_list()
    )
    assert (
        cat(collect(module(prepared, predict_split="val").predict_dataloader()), "item").tolist()
        == val[S.ITEM].to_list()
    )


def oracle_history(past: pl.DataFrame, user: int, ts: int, length: int) -> list[int]:
    pos = [
        (t, i)
        for u, i, y, t in past.select(S.USER, S.ITEM, S.LABEL, S.TIMESTAMP).iter_rows()
        if u == user and y == 1 and t < ts
    ]
    pos.sort(reverse=True)  # most recent first; equal timestamps: larger item id first
    out = [i + 1 for _, i in pos[:length]]
    return out + [0] * (length - len(out))


@pytest.mark.parametrize("split", S.SPLITS)
def test_history_matches_bruteforce_oracle(prepared: Path, split: str) -> None:
    dm = module(prepared)
    batches = collect(dm.loader(split, shuffle=False))
    hist = cat(batches, "hist_item")
    rows = split_rows(prepared, split)
    # a train sample's past is the train positives; a val / test sample's past is the train and val positives
    past = pl.concat(
        [split_rows(prepared, s) for s in (("train",) if split == "train" else ("train", "val"))]
    )
    want = [oracle_history(past, u, t, H) for u, t in rows.select(S.USER, S.TIMESTAMP).iter_rows()]
    assert hist.tolist() == want
    assert (hist > 0).sum(1).max() == H and (hist == 0).all(1).any()  # full and empty histories both occur
    # ties: some sample has a history positive at the same timestamp as a later-excluded one
    hist_sid = cat(batches, "hist_item_sid")
    item = (hist - 1).clamp(min=0)
    expected_sid = torch.stack([item % 4, item % 5, item % 3], -1) * (hist > 0).unsqueeze(-1)
    assert torch.equal(hist_sid, expected_sid)
    # the history items' train counts, gathered per batch like the rest (0 where padded)
    items = pl.read_parquet(prepared / S.ITEMS_FILE).sort(S.ITEM)
    count = torch.tensor(items[S.TRAIN_COUNT].to_list(), dtype=torch.float32)
    assert torch.equal(cat(batches, "hist_item_count"), count[item] * (hist > 0))


def test_history_ties_are_excluded_strictly(tmp_path: Path) -> None:
    """Positives at the sample's own timestamp are not history; earlier ones are, most recent first."""
    root = make_prepared(tmp_path)
    train = pl.DataFrame(
        {S.USER: [0, 0, 0, 0, 1], S.ITEM: [3, 1, 2, 4, 5], S.LABEL: [1, 1, 1, 0, 1], S.TIMESTAMP: [5, 5, 7, 6, 1],
         S.RATING: [None] * 5},
        schema=S.INTERACTIONS,
    )  # fmt: skip
    write_parquet(train, root / S.split_file("train"))
    test = pl.DataFrame(
        {S.USER: [0, 0, 0, 1, 2], S.ITEM: [9, 9, 9, 9, 9], S.LABEL: [0, 1, 0, 1, 0], S.TIMESTAMP: [5, 7, 8, 1, 9],
         S.RATING: [None] * 5},
        schema=S.INTERACTIONS,
    )  # fmt: skip
    write_parquet(test, root / S.split_file("test"))
    val = pl.DataFrame(
        {S.USER: [6], S.ITEM: [0], S.LABEL: [1], S.TIMESTAMP: [0], S.RATING: [None]}, schema=S.INTERACTIONS
    )  # a user with no test row: the test histories hold train positives only
    write_parquet(val, root / S.split_file("val"))
    b = next(iter(module(root).test_dataloader()))
    assert b.hist_item.tolist() == [[0, 0, 0, 0], [4, 2, 0, 0], [3, 4, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_test_history_holds_earlier_val_positives_only(tmp_path: Path) -> None:
    """Issue 13: a test sample's history is every positive before it in train AND val, never a later one, never a
    test row, never the sample itself; a val sample sees earlier val positives; a train sample sees train only."""
    root = make_prepared(tmp_path)
    rows = {  # user 0: train positives at t=1,2; val positives at t=5 (item 6) and t=9 (item 7, after the test row)
        "train": ([0, 0, 0], [1, 2, 3], [1, 1, 0], [1, 2, 3]),
        "val": ([0, 0, 0, 1], [6, 7, 8, 4], [1, 1, 0, 1], [5, 9, 6, 2]),
        "test": ([0, 0, 1], [10, 11, 4], [1, 0, 1], [7, 8, 3]),
    }
    for split, (u, i, y, t) in rows.items():
        frame = {S.USER: u, S.ITEM: i, S.LABEL: y, S.TIMESTAMP: t, S.RATING: [None] * len(u)}
        write_parquet(pl.DataFrame(frame, schema=S.INTERACTIONS), root / S.split_file(split))
    dm = module(root)
    test = next(iter(dm.test_dataloader()))
    # user 0 at t=7: val item 6 (t=5), then train items 2, 1; not val item 7 (t=9), not test item 10 (itself)
    assert test.hist_item[0].tolist() == [7, 3, 2, 0]
    # user 0 at t=8: the test positive at t=7 is not history (test rows never are)
    assert test.hist_item[1].tolist() == [7, 3, 2, 0]
    # user 1 at t=3: the val positive at t=2 (item 4) is there although the user has no train row
    assert test.hist_item[2].tolist() == [5, 0, 0, 0]
    val = next(iter(dm.val_dataloader()))
    # val rows: t=5 sees train only; t=9 sees val item 6 (t=5) and not itself; t=6 sees item 6; user 1 t=2: none
    assert val.hist_item.tolist() == [[3, 2, 0, 0], [7, 3, 2, 0], [7, 3, 2, 0], [0, 0, 0, 0]]
    train = next(iter(dm.loader("train", shuffle=False)))
    assert train.hist_item.tolist() == [[0, 0, 0, 0], [2, 0, 0, 0], [3, 2, 0, 0]]


def test_feature_vocab_and_tokens(prepared: Path) -> None:
    dm = module(prepared)
    dm.setup()
    feats = dm.tables.items.feats
    vocab = sorted(GENRES)
    for i in range(N_ITEMS):
        genre = [] if i == 5 else [GENRES[(i + k) % 5] for k in range(i % 4)]
        want = [vocab.index(g) + 1 for g in genre[:3]]
        assert feats.tokens[i, 0].tolist() == want + [0] * (3 - len(want)), i
        tags = [j + 1 for j in range(min(i, 3))]  # t00 < t01 < ... sorted; first 3 kept
        assert feats.tokens[i, 1].tolist() == tags + [0] * (3 - len(tags)), i
    gender = dm.tables.users.feats.tokens[:, 0, 0]
    assert gender.tolist() == [2 if u % 2 == 0 else 1 for u in range(N_USERS)]  # f -> 1, m -> 2


def test_eval_shards_are_disjoint_and_cover(prepared: Path) -> None:
    dm = module(prepared, eval_batch_size=3)
    for split in ("val", "test"):
        n = split_rows(prepared, split).height
        seen = []
        for rank in range(2):
            sampler = dm.loader(split, shuffle=False, rank=rank, world_size=2).sampler
            seen.extend(torch.cat(list(sampler)).tolist())
            assert len(list(sampler)) == len(sampler)
        assert sorted(seen) == list(range(n))  # exactly once, no padding duplicates
    n = split_rows(prepared, "train").height
    shards = [
        torch.cat(list(dm.loader("train", shuffle=True, rank=r, world_size=2).sampler)) for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == n // 2  # equal steps per rank
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_index_batches_sizes() -> None:
    s = IndexBatches(10, batch_size=4, shuffle=False)
    assert [b.tolist() for b in s] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and len(s) == 3
    s = IndexBatches(10, batch_size=4, shuffle=True, seed=1)
    assert sorted(torch.cat(list(s)).tolist()) == list(range(10)) and len(s) == 3


def test_input_errors(tmp_path: Path) -> None:
    root = make_prepared(tmp_path / "ok")
    with pytest.raises(InputError, match="not found"):
        module(tmp_path / "nowhere").setup()
    # an ID table missing items names the file, the column and a few missing ids
    sids = pl.read_parquet(root / "sids" / S.ITEM_SIDS_FILE)
    meta = read_meta(root / "sids" / S.ITEM_SIDS_FILE)
    write_table(sids.filter(pl.col(S.ITEM) != 7), tmp_path / "short.parquet", meta)
    with pytest.raises(InputError) as err:
        module(root, item_sids=str(tmp_path / "short.parquet")).setup()
    assert err.value.column == S.ITEM and err.value.file.endswith("short.parquet") and "[7]" in str(err.value)
    assert "m7" in str(err.value)  # raw id
    assert "semid build" in err.value.fix and "build-semids" not in str(err.value)  # a command that exists
    write_table(sids.with_columns(pl.col(S.ITEM) + 1), tmp_path / "shifted.parquet", meta)
    with pytest.raises(InputError, match="unknown to the dataset") as err:
        module(root, item_sids=str(tmp_path / "shifted.parquet")).setup()
    assert err.value.column == S.ITEM
    # a table built from another prepared dataset (same counts, same ids) is refused by its data_hash
    write_table(sids, tmp_path / "other.parquet", {**meta, "data_hash": "another-dataset"})
    with pytest.raises(InputError, match="data_hash") as err:
        module(root, item_sids=str(tmp_path / "other.parquet")).setup()
    assert err.value.file.endswith("other.parquet")
    bad = split_rows(root, "val").with_columns(pl.lit(2, dtype=pl.Int8).alias(S.LABEL))
    write_parquet(bad, root / S.split_file("val"))
    with pytest.raises(InputError, match="labels must be 0 or 1") as err:
        module(root).setup()
    assert err.value.column == S.LABEL and err.value.file.endswith("val.parquet")
    write_parquet(bad.clear(), root / S.split_file("val"))
    with pytest.raises(InputError, match="val split is empty"):
        module(root).setup()
    (root / S.split_file("val")).unlink()
    with pytest.raises(InputError, match="not found") as err:
        module(root).setup()
    assert err.value.file.endswith("val.parquet")


class _Recorder(L.LightningModule):
    """No model: records the items of each training epoch to check Lightning drives set_epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch: Batch, batch_idx: int):
        self.seen.setdefault(self.current_epoch, []).extend(batch.item.tolist())
        return (self.w * batch.label).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_trainer_shuffles_per_epoch(prepared: Path) -> None:
    model = _Recorder()
    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=module(prepared))
    n = split_rows(prepared, "train").height
    assert len(model.seen[0]) == len(model.seen[1]) == n
    assert sorted(model.seen[0]) == sorted(model.seen[1]) and model.seen[0] != model.seen[1]


def test_worker_processes_serve_the_same_batches(prepared: Path) -> None:
    plain, workers = module(prepared).train_dataloader(), module(prepared, num_workers=1).train_dataloader()
    for loader in (plain, workers):
        loader.sampler.set_epoch(2)
    for a, b in zip(plain, workers, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def write_content(
    path: Path, key: str, n: int, dim: int, *, data_hash: str = DATA_HASH, drop: int | None = None
):
    ids = np.arange(n)[::-1]  # stored out of order on purpose
    emb = (ids[:, None] * 10 + np.arange(dim)[None, :]).astype(np.float32)  # row of id i: 10 i, 10 i + 1, ...
    frame = pl.DataFrame({key: ids.astype(np.int32), S.EMBEDDING: emb})
    if drop is not None:
        frame = frame.filter(pl.col(key) != drop)
    write_parquet(frame, path, {"data_hash": data_hash})
    return path


def test_content_vectors_are_served_per_batch(prepared: Path, tmp_path: Path) -> None:
    write_content(tmp_path / S.ITEM_EMB_FILE, S.ITEM, N_ITEMS, 5)
    write_content(tmp_path / S.USER_EMB_FILE, S.USER, N_USERS, 3)
    dm = module(prepared, item_content=str(tmp_path / S.ITEM_EMB_FILE), user_content=str(tmp_path))
    assert (dm.spec.item_content_dim, dm.spec.user_content_dim) == (5, 3)
    b = next(iter(dm.loader("test", shuffle=False)))
    assert b.item_content.shape == (b.item.numel(), 5) and b.user_content.shape == (b.user.numel(), 3)
    torch.testing.assert_close(b.item_content[:, 0], b.item.float() * 10)
    torch.testing.assert_close(b.user_content[:, 2], b.user.float() * 10 + 2)
    plain = module(prepared)
    assert plain.spec.item_content_dim == 0
    assert next(iter(plain.loader("test", shuffle=False))).item_content.shape == (b.item.numel(), 0)
    assert b.hist_content.numel() == 0 and not dm.spec.history_content  # served only when asked


def test_history_content_is_each_history_items_vector_and_zero_where_padded(
    prepared: Path, tmp_path: Path
) -> None:
    content = write_content(tmp_path / S.ITEM_EMB_FILE, S.ITEM, N_ITEMS, 5)
    dm = module(prepared, item_content=str(content), history_content=True)
    assert dm.spec.history_content
    for split in ("train", "test"):
        b = next(iter(dm.loader(split, shuffle=False)))
        assert b.hist_content_index.shape == b.hist_item.shape
        assert b.hist_content.shape == (len(b.hist_item.unique()), 5)  # each distinct history item once
        per_position = b.hist_content[b.hist_content_index]  # (B, H, 5)
        real = b.hist_item > 0
        assert real.any() and (~real).any()
        torch.testing.assert_close(per_position[real][:, 1], (b.hist_item[real] - 1).float() * 10 + 1)
        assert (per_position[~real] == 0).all()
    with pytest.raises(InputError, match="data.item_content"):
        module(prepared, history_content=True)


def test_content_vectors_of_another_dataset_or_incomplete_are_refused(prepared: Path, tmp_path: Path) -> None:
    other = write_content(tmp_path / "other.parquet", S.ITEM, N_ITEMS, 4, data_hash="another")
    with pytest.raises(InputError, match="another prepared dataset") as err:
        module(prepared, item_content=str(other)).setup()
    assert err.value.file == str(other)
    partial = write_content(tmp_path / "partial.parquet", S.ITEM, N_ITEMS, 4, drop=3)
    with pytest.raises(InputError, match=r"1 of the dataset's 15 ids have no content vector: \[3\]"):
        module(prepared, item_content=str(partial)).setup()
    with pytest.raises(InputError, match="file not found"):
        module(prepared, user_content=str(tmp_path / "nope.parquet")).setup()


# -- scenarios and the merged source-domain history ---------------------------------------------------------


def write_scenarios(prepared: Path, out: Path, data_hash: str = DATA_HASH) -> Path:
    """User u -> scenario u % 3, as semid.scenarios.write lays it out."""
    from semid import scenarios as SC

    table = pl.DataFrame({S.USER: range(N_USERS), SC.SCENARIO: [u % 3 for u in range(N_USERS)]}).cast(
        pl.Int32
    )
    meta = {"kind": "scenarios", "key": S.USER, "names": ["a", "b", "c"], "data_hash": data_hash}
    write_parquet(table, out, meta)
    return out


def test_scenarios_are_served_per_row_and_named_in_the_spec(prepared: Path, tmp_path: Path) -> None:
    dm = module(prepared, scenarios=str(write_scenarios(prepared, tmp_path / "scenarios.parquet")))
    assert dm.spec.n_scenarios == 3 and dm.spec.scenario_names == ("a", "b", "c")
    assert dm.spec.data_hash == DATA_HASH
    for split in S.SPLITS:
        batches = collect(dm.loader(split, shuffle=split == "train"))
        user, scen = cat(batches, "user"), cat(batches, "scenario")
        assert scen.dtype == torch.int64 and torch.equal(scen, user % 3)
    plain = collect(module(prepared).loader("val", shuffle=False))
    assert plain[0].scenario.numel() == 0 and plain[0].hist_type.numel() == 0  # not asked: empty
    assert module(prepared).spec.n_scenarios == 0


def test_scenarios_of_another_dataset_or_incomplete_are_refused(prepared: Path, tmp_path: Path) -> None:
    other = write_scenarios(prepared, tmp_path / "other.parquet", data_hash="another")
    with pytest.raises(InputError, match="another prepared dataset"):
        module(prepared, scenarios=str(other)).setup()
    from semid import scenarios as SC

    short = pl.DataFrame({S.USER: [0, 1], SC.SCENARIO: [0, 1]}).cast(pl.Int32)
    meta = {"kind": "scenarios", "key": S.USER, "names": ["a", "b"], "data_hash": DATA_HASH}
    write_parquet(short, tmp_path / "short.parquet", meta)
    with pytest.raises(InputError, match="covers 2 of the dataset's 7"):
        module(prepared, scenarios=str(tmp_path / "short.parquet")).setup()


def test_source_history_merges_strictly_before_and_is_typed(prepared: Path, tmp_path: Path) -> None:
    """Source events (label-free, typed 1) join the history exactly as an oracle over target + source events
    says: strictly before the sample's timestamp, most recent first; users without target data are dropped."""
    src = pl.DataFrame(
        {
            S.RAW_USER: ["u0", "u0", "u1", "x9"],
            S.USER: [0, 0, 1, None],
            S.ITEM: [N_ITEMS - 1, 3, N_ITEMS - 1, 2],  # the cold item too
            S.TIMESTAMP: [5, 11, 0, 3],
        },
        schema={S.RAW_USER: pl.String, S.USER: pl.Int32, S.ITEM: pl.Int32, S.TIMESTAMP: pl.Int64},
    )
    write_parquet(src, tmp_path / "source_history.parquet", {"data_hash": DATA_HASH})
    dm = module(prepared, source_history=str(tmp_path), history_len=6)  # a folder: its source_history.parquet
    for split in S.SPLITS:
        batches = collect(dm.loader(split, shuffle=False))
        hist, types = cat(batches, "hist_item"), cat(batches, "hist_type")
        rows = split_rows(prepared, split)
        past = pl.concat(
            [split_rows(prepared, s) for s in (("train",) if split == "train" else ("train", "val"))]
        ).select(S.USER, S.ITEM, S.LABEL, S.TIMESTAMP)
        events = [(u, i, t, 0) for u, i, y, t in past.iter_rows() if y == 1]
        events += [
            (u, i, t, 1) for u, i, t in src.drop_nulls(S.USER).select(S.USER, S.ITEM, S.TIMESTAMP).iter_rows()
        ]
        want_h, want_t = [], []
        for u, ts in rows.select(S.USER, S.TIMESTAMP).iter_rows():
            mine = sorted(((t, i, k) for uu, i, t, k in events if uu == u and t < ts), reverse=True)[:6]
            want_h.append([i + 1 for _, i, _ in mine] + [0] * (6 - len(mine)))
            want_t.append([k for _, _, k in mine] + [0] * (6 - len(mine)))
        assert hist.tolist() == want_h and types.tolist() == want_t
        assert (types == 1).any() or split == "train"
    other = tmp_path / "o"
    other.mkdir()
    write_parquet(src, other / "source_history.parquet", {"data_hash": "another"})
    with pytest.raises(InputError, match="another prepared dataset"):
        module(prepared, source_history=str(other)).setup()


def test_a_fit_on_the_datamodule_indexes_the_sid_prefix_tables_once(prepared: Path, tmp_path: Path) -> None:
    from ctr.module import CTRTask

    dm = module(prepared)

    def fit(task: CTRTask) -> L.Trainer:
        trainer = L.Trainer(
            max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
        )  # fmt: skip
        trainer.fit(task, datamodule=dm)
        return trainer

    task = CTRTask(
        {"class_path": "ctr.models.sid_features.SIDFeatures", "init_args": {"embed_dim": 4}}, dm.spec
    )
    items, users = task.net.item_sid, task.net.user_sid
    assert items.indexed == (False, True, True) and users.indexed == (
        False,
        False,
    )  # 15 items, 4 x 5 x 6 codes
    trainer = fit(task)
    codes = dm.tables.items.sid.codes
    assert (
        bool(items.vocab_set) and (items.prefix_index(codes) > 0).all()
    )  # every item's prefix has its own row
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = CTRTask.load_from_checkpoint(tmp_path / "m.ckpt")
    torch.testing.assert_close(loaded.net.item_sid.vocab, items.vocab)
    before = loaded.net.item_sid.vocab.clone()
    fit(loaded)  # fine-tuning a restored network keeps its index
    torch.testing.assert_close(loaded.net.item_sid.vocab, before)
    raw = torch.load(tmp_path / "m.ckpt", weights_only=True)
    raw["state_dict"]["net.item_sid.table.weight"] = raw["state_dict"]["net.item_sid.table.weight"][:-1]
    torch.save(raw, tmp_path / "old.ckpt")
    with pytest.raises(InputError, match="weights do not fit the SIDFeatures") as err:
        CTRTask.load_from_checkpoint(tmp_path / "old.ckpt")
    assert "net.item_sid.table.weight" in str(err.value)
