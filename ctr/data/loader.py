"""Batches from `Tables`: `SplitData` (an index tensor -> a whole `Batch`), `IndexBatches` (the rank-sharded
sampler) and `CTRDataModule` (the LightningDataModule that reads once and serves them).

A batch is a handful of index gathers from pre-materialised tensors, so there is no per-sample Dataset or collate.
DDP: the loaders shard themselves (train: each rank takes an equal share of the epoch's permutation; eval: rank r
takes batches r::world_size, disjoint and covering every sample once, so ranks may get unequal batch counts -- do not
sync inside eval steps). Run the Trainer with `use_distributed_sampler=False`.
"""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ctr.batch import NO_CODES, NO_CONTENT, Batch, DataSpec
from ctr.data.arrays import Tables
from ctr.data.history import history_slots
from ctr.data.tables import check_train_splits, load_tables
from semid.errors import InputError

Split = Literal["train", "val", "test"]
TrainSplit = Literal["train", "val"]


class SplitData(Dataset):
    """One split; indexing with a tensor of sample indices returns the whole `Batch` (no collate).

    Every field is an `index_select` from a pre-materialised table: one kernel per field, several times faster
    than advanced indexing (`table[idx]`) at CTR batch sizes. The history's per-item tables get a leading zero
    row, so `History.items` (item id + 1, 0 = padding) indexes them directly: padded slots read zeros without a
    clamp and a mask multiply.
    """

    def __init__(
        self, tables: Tables, split: str, history_len: int, *, history_content: bool = False
    ) -> None:
        self.tables = tables
        self.arrays = tables.splits[split]
        self.split = split
        self.history_len = history_len
        items = tables.items
        self.hist_sid_table = torch.cat(
            [items.sid.codes.new_zeros(1, items.sid.codes.shape[1]), items.sid.codes]
        )
        self.hist_count_table = torch.cat([items.count.new_zeros(1), items.count])  # (n_items + 1,)
        self.history_content = history_content

    def __len__(self) -> int:
        return self.arrays.user.numel()

    def __getitem__(self, idx: Tensor) -> Batch:
        """idx: (B,) int64 sample indices of the split."""
        t, a = self.tables, self.arrays
        user, item = take(a.user, idx), take(a.item, idx)  # (B,)
        history = t.histories[self.split]
        slots = history_slots(history, user, take(a.hist_end, idx), self.history_len)  # (B, H)
        hist = take(history.items, slots)  # (B, H) item id + 1, 0 = pad
        imag = t.imagined
        return Batch(
            user=user,
            item=item,
            label=take(a.label, idx),
            user_sid=take(t.users.sid.codes, user),  # (B, L_u)
            item_sid=take(t.items.sid.codes, item),  # (B, L_i)
            user_count=take(t.users.count, user),
            item_count=take(t.items.count, item),
            user_feats=take(t.users.feats.tokens, user),  # (B, F_u, M_u)
            item_feats=take(t.items.feats.tokens, item),  # (B, F_i, M_i)
            hist_item=hist,
            hist_item_sid=take(self.hist_sid_table, hist),  # (B, H, L_i), 0 where padded
            hist_item_count=take(self.hist_count_table, hist),  # (B, H), 0 where padded
            user_bucket=take(t.users.bucket, user),
            item_bucket=take(t.items.bucket, item),
            user_content=take(t.users.content, user),  # (B, D_u), (B, 0) when none
            item_content=take(t.items.content, item),  # (B, D_i)
            scenario=take(a.scenario, idx) if a.scenario.numel() else NO_CODES,  # (B,) or empty
            hist_type=take(history.types, slots) if t.merged_source else NO_CODES,  # (B, H) or empty
            # imagined from train positives only, the same rows for every split: (B, K) or empty
            imag_item=NO_CODES if imag is None else take(imag.items, user),
            imag_conf=NO_CONTENT if imag is None else take(imag.confidence, user),
            **(distinct_history_content(t.items.content, hist) if self.history_content else {}),
        )


def distinct_history_content(content: Tensor, hist: Tensor) -> dict[str, Tensor]:
    """`Batch.hist_content` / `hist_content_index` of a history (B, H) of item id + 1 (0 = padding): the rows of
    `content` (n_items, D) of its distinct items once (a zero row for padding), and each position's row.
    A 2,048 x 20 batch holds a few thousand distinct items: gathering those instead of every position is several
    times cheaper (a (B, H, D) gather of 384-d vectors is 63 MB a batch)."""
    distinct, index = torch.unique(hist, return_inverse=True)  # (U,), (B, H)
    rows = content.index_select(0, (distinct - 1).clamp(min=0))  # (U, D)
    return {"hist_content": rows.masked_fill((distinct == 0)[:, None], 0.0), "hist_content_index": index}


def take(table: Tensor, index: Tensor) -> Tensor:
    """Rows of `table` (n, *rest) at `index` (any shape) -> (*index.shape, *rest): `table[index]` as one
    `index_select`."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])


class IndexBatches(Sampler[Tensor]):
    """Yields index tensors, one per batch, for this rank.

    shuffle=True (train): a permutation seeded by (seed, epoch); rank r takes every world_size-th index of it,
    cut to n // world_size so that every rank runs the same number of steps (world_size 1 serves every sample).
    shuffle=False (eval): file order in batches; rank r takes batches r::world_size (disjoint, covering all).
    """

    def __init__(
        self, n: int, *, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every epoch (the train order depends on it)."""
        self.epoch = epoch

    def _batches(self) -> list[Tensor]:
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            mine = torch.from_numpy(perm[self.rank :: self.world_size][: self.n // self.world_size])
            return list(mine.split(self.batch_size))
        return list(torch.arange(self.n).split(self.batch_size))[self.rank :: self.world_size]

    def __iter__(self):
        yield from self._batches()

    def __len__(self) -> int:
        if self.shuffle:
            return math.ceil((self.n // self.world_size) / self.batch_size)
        return len(range(self.rank, math.ceil(self.n / self.batch_size), self.world_size))


def _whole_batch(batch: Batch) -> Batch:
    return batch


class CTRDataModule(L.LightningDataModule):
    """Serves `Batch`es of a prepared dataset; `spec` tells the model the cardinalities (link it in LightningCLI)."""

    def __init__(
        self,
        data_dir: str,
        item_sids: str | None = None,
        user_sids: str | None = None,
        batch_size: int = 2048,
        eval_batch_size: int = 8192,
        history_len: int = 20,
        max_tokens_per_feature: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        predict_split: Literal["val", "test"] = "test",
        item_content: str | None = None,
        user_content: str | None = None,
        scenarios: str | None = None,
        source_history: str | None = None,
        imagined: str | None = None,
        train_splits: tuple[TrainSplit, ...] = ("train",),
        history_content: bool = False,
    ) -> None:
        """
        Args:
            data_dir: a prepared dataset directory (`semid prepare` output).
            item_sids: item ID table (item_sids.parquet, or the directory holding it); None = one constant code.
            user_sids: user ID table (user_sids.parquet, or its directory); None = one constant code.
            batch_size: training batch size (per rank).
            eval_batch_size: validation / test / predict batch size.
            history_len: number of past positives per sample (train ones for train samples; train and val ones
                for val and test samples; always strictly before the sample).
            max_tokens_per_feature: multi-valued side features keep at most this many tokens.
            num_workers: DataLoader worker processes (0 = gather in the main process, usually fastest).
            seed: seeds the per-epoch shuffling.
            predict_split: the split `predict_dataloader` serves.
            item_content: frozen item content vectors (`semid build`'s item_embeddings.parquet, or the folder
                holding it), served as `Batch.item_content` (ContentFeatures); None = none.
            user_content: the same for users (user_embeddings.parquet).
            scenarios: a scenarios.parquet (semid.scenarios.write, or the folder holding it): every row gets its
                user's / item's scenario as `Batch.scenario` (STAR, MetaLayers, per-scenario metrics); refused when
                built from another prepared dataset. None = no scenarios.
            source_history: the amazon-food-kitchen source_history.parquet (or the prepared folder holding it):
                the users' source-domain (Food) events join their histories, strictly before each sample's
                timestamp, typed in `Batch.hist_type` (the naive source-history arm). None = target events only.
            imagined: `semid imagine`'s imagined.parquet (or its folder): each user's imagined behaviours (made
                from train positives only) ride along as a separate, flagged view, `Batch.imag_item` /
                `Batch.imag_conf` (ImaginedDeepFM, ImaginedDIN); refused when built from another prepared dataset.
                None = no imagined view.
            train_splits: the splits whose rows the train loader serves: (train,) (default), or (train, val) for
                the refit on train + val before testing (`semid run --refit_train_val`). Val rows used for training
                read the history they are validated with (train and val positives strictly before them; train rows
                then see val positives too, which only a non-temporal split puts before them). Train counts and
                activity buckets stay the prepared ones, computed from the train split: a user or item first seen in
                val keeps count 0 and bucket `cold` although the refit trains on its val rows (AKT's gate treats it
                as cold), exactly as it is treated when its test rows are scored. The val loader still serves the
                val split; a refit does not validate on it.
            history_content: also serve the history items' content vectors, `Batch.hist_content` (one row per
                distinct history item of the batch) and `hist_content_index` (AKT's history_content); needs
                item_content.
        """
        super().__init__()
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("history_len", history_len, 0),
            ("max_tokens_per_feature", max_tokens_per_feature, 1),
            ("num_workers", num_workers, 0),
        ):
            if value < low:
                raise InputError(f"{name}={value} must be >= {low}", fix=f"set data.{name} to at least {low}")
        check_train_splits(train_splits)
        if predict_split not in ("val", "test"):
            raise InputError(
                f"predict_split={predict_split!r}", fix="set data.predict_split to 'val' or 'test'"
            )
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.item_sids = item_sids
        self.user_sids = user_sids
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.history_len = history_len
        self.max_tokens_per_feature = max_tokens_per_feature
        self.num_workers = num_workers
        self.seed = seed
        self.predict_split = predict_split
        self.item_content = item_content
        self.user_content = user_content
        self.scenarios = scenarios
        self.source_history = source_history
        self.imagined = imagined
        self.train_splits = tuple(train_splits)
        if history_content and item_content is None:
            raise InputError(
                "data.history_content=true serves the history items' content vectors and data.item_content is unset",
                fix="set data.item_content to semid build's item_embeddings.parquet, or data.history_content: false",
            )
        self.history_content = history_content
        self.tables: Tables | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read everything once; later calls (every Trainer stage, `spec`) return at once."""
        if self.tables is None:
            self.tables = load_tables(
                self.data_dir,
                item_sids=self.item_sids,
                user_sids=self.user_sids,
                max_tokens_per_feature=self.max_tokens_per_feature,
                item_content=self.item_content,
                user_content=self.user_content,
                scenarios=self.scenarios,
                source_history=self.source_history,
                imagined=self.imagined,
                train_splits=self.train_splits,
            )

    @property
    def spec(self) -> DataSpec:
        self.setup()
        items, users = self.tables.items, self.tables.users
        return DataSpec(
            n_users=users.count.numel(),
            n_items=items.count.numel(),
            user_feature_names=users.feats.names,
            item_feature_names=items.feats.names,
            user_feature_vocab=users.feats.vocab,
            item_feature_vocab=items.feats.vocab,
            user_sid_sizes=users.sid.sizes,
            item_sid_sizes=items.sid.sizes,
            history_len=self.history_len,
            user_count_max=float(users.count.max()),
            item_count_max=float(items.count.max()),
            user_content_dim=int(users.content.shape[1]),
            item_content_dim=int(items.content.shape[1]),
            n_scenarios=0 if self.tables.scenarios is None else len(self.tables.scenarios.names),
            scenario_names=() if self.tables.scenarios is None else self.tables.scenarios.names,
            data_hash=self.tables.data_hash,
            imagined_k=0 if self.tables.imagined is None else int(self.tables.imagined.items.shape[1]),
            history_content=self.history_content,
        )

    @property
    def world_size(self) -> int:
        return int(self.trainer.world_size) if self.trainer is not None else 1

    @property
    def rank(self) -> int:
        return int(self.trainer.global_rank) if self.trainer is not None else 0

    def dataset(self, split: Split) -> SplitData:
        self.setup()
        return SplitData(self.tables, split, self.history_len, history_content=self.history_content)

    def loader(
        self, split: Split, *, shuffle: bool, rank: int | None = None, world_size: int | None = None
    ) -> DataLoader:
        """Batches of `split` for one rank (default: the trainer's rank and world size, else 0 and 1)."""
        rank = self.rank if rank is None else rank
        world_size = self.world_size if world_size is None else world_size
        if world_size > 1 and self.trainer is not None:
            connector = getattr(self.trainer, "_accelerator_connector", None)
            if getattr(connector, "use_distributed_sampler", False):
                raise InputError(
                    "CTRDataModule shards batches by rank itself; Lightning's distributed sampler would re-shard them",
                    fix="create the Trainer with use_distributed_sampler=False (trainer.use_distributed_sampler: false)",
                )
        data = self.dataset(split)
        sampler = IndexBatches(
            len(data),
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
        )
        return DataLoader(
            data,
            sampler=sampler,
            batch_size=None,
            collate_fn=_whole_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.predict_split, shuffle=False)
