"""ctr.ranking: held-out candidate lists -> Batches (cold user, the list's own history) -> HR@K / NDCG@K."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from ctr import ranking
from ctr.batch import Batch, ModelOutput
from ctr.metrics import hit_rate_at_k, ndcg_at_k
from ctr.models import DeepFM
from semid import schema as S
from semid.amazon import HISTORY, NEGATIVES, TARGET_ITEM
from semid.errors import InputError
from semid.io import write_parquet
from tests.test_ctr_data import DATA_HASH, N_ITEMS, make_prepared, module

pytestmark = pytest.mark.usefixtures("one_thread")

LISTS = pl.DataFrame(
    {
        S.RAW_USER: ["h0", "h1", "h2"],
        HISTORY: [[1, 2, 3, 4, 5, 6], [], [7]],  # oldest first
        TARGET_ITEM: [0, 3, 9],
        NEGATIVES: [[10, 11, 12, 13], [1, 2, 4, 5], [12, 13, 14, 0]],
    },
    schema={
        S.RAW_USER: pl.String,
        HISTORY: pl.List(pl.Int32),
        TARGET_ITEM: pl.Int32,
        NEGATIVES: pl.List(pl.Int32),
    },
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = make_prepared(tmp_path_factory.mktemp("prepared_rank"))
    write_parquet(LISTS, root / "ranking_test.parquet", {"data_hash": DATA_HASH})
    return root


class ByItemId(nn.Module):
    """logit = -item id: the smallest candidate id ranks first."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, batch: Batch) -> ModelOutput:
        logit = -self.w * batch.item.float()
        return ModelOutput(logit, logit.new_zeros(()), {})


def test_lists_become_cold_user_batches_with_their_own_history(prepared: Path) -> None:
    dm = module(prepared)
    dm.setup()
    source = np.zeros(N_ITEMS, dtype=bool)
    source[[2, 5]] = True  # pretend items 2 and 5 are source-domain
    kw = dict(n_items=N_ITEMS, history_len=4, source_items=source, data_hash=DATA_HASH)
    lists = ranking.read_lists(prepared / "ranking_test.parquet", keep_source=False, **kw)
    assert lists.candidates.tolist() == [[0, 10, 11, 12, 13], [3, 1, 2, 4, 5], [9, 12, 13, 14, 0]]
    assert lists.hist_item.tolist() == [
        [7, 5, 4, 2],
        [0, 0, 0, 0],
        [8, 0, 0, 0],
    ]  # id + 1, newest first, 2/5 gone
    merged = ranking.read_lists(prepared / "ranking_test.parquet", keep_source=True, **kw)
    assert merged.hist_item[0].tolist() == [7, 6, 5, 4] and merged.hist_type[0].tolist() == [0, 1, 0, 0]
    batch = next(ranking.list_batches(dm.tables, lists, lists_per_batch=2))
    assert batch.item.tolist() == [0, 10, 11, 12, 13, 3, 1, 2, 4, 5]
    assert batch.label.tolist() == [1, 0, 0, 0, 0] * 2
    assert (batch.user == 0).all() and (batch.user_count == 0).all() and (batch.user_feats == 0).all()
    assert (batch.user_bucket == S.BUCKETS.index("cold")).all()
    assert torch.equal(batch.hist_item[:5], lists.hist_item[0].expand(5, -1))
    assert torch.equal(batch.item_sid, dm.tables.items.sid.codes[batch.item])
    assert batch.hist_type.numel() == 0  # the data module merged no source history
    assert batch.hist_content.numel() == 0  # served only when asked
    content = torch.arange(N_ITEMS * 3, dtype=torch.float32).view(N_ITEMS, 3)
    tables = dataclasses.replace(dm.tables, items=dataclasses.replace(dm.tables.items, content=content))
    batch = next(ranking.list_batches(tables, lists, lists_per_batch=2, history_content=True))
    per_position = batch.hist_content[batch.hist_content_index]  # (B, H, 3)
    real = batch.hist_item > 0
    assert torch.equal(per_position[real], content[batch.hist_item[real] - 1])
    assert (per_position[~real] == 0).all()


def test_scores_and_metrics_of_a_network(prepared: Path) -> None:
    dm = module(prepared)
    # the smallest id wins: list 0 (target 0) ranks first, list 1 (target 3) third, list 2 (target 9) second
    got = ranking.evaluate(ByItemId(), dm, k=2)
    assert (got.n_lists, got.n_candidates, got.k) == (3, 5, 2)
    assert got.hr == pytest.approx(2 / 3)
    assert got.ndcg == pytest.approx((1.0 + 1 / np.log2(3)) / 3)
    torch.manual_seed(0)
    net = DeepFM(dm.spec, embed_dim=4, mlp_dims=(8,)).train()
    dm.setup()
    lists = ranking.read_lists(
        ranking.default_path(prepared),
        n_items=N_ITEMS,
        history_len=dm.history_len,
        source_items=np.zeros(N_ITEMS, dtype=bool),
        keep_source=False,
        data_hash=DATA_HASH,
    )
    scores = ranking.score_lists(net, dm.tables, lists, lists_per_batch=2)
    assert net.training  # mode restored
    one = next(ranking.list_batches(dm.tables, lists, lists_per_batch=1))
    with torch.no_grad():
        assert torch.allclose(scores[0], net.eval()(one).logit)
    res = ranking.evaluate(net, dm, k=3)
    assert res.hr == pytest.approx(hit_rate_at_k(scores, 3)) and res.ndcg == pytest.approx(
        ndcg_at_k(scores, 3)
    )


def test_lists_of_another_dataset_or_bad_ids_are_refused(prepared: Path, tmp_path: Path) -> None:
    dm = module(prepared)
    write_parquet(LISTS, tmp_path / "other.parquet", {"data_hash": "another"})
    with pytest.raises(InputError, match="another prepared dataset"):
        ranking.evaluate(ByItemId(), dm, tmp_path / "other.parquet")
    bad = LISTS.with_columns(pl.Series(TARGET_ITEM, [0, 3, 99], dtype=pl.Int32))
    write_parquet(bad, tmp_path / "bad.parquet", {"data_hash": DATA_HASH})
    with pytest.raises(InputError, match=r"unknown to the dataset .*\[99\]"):
        ranking.evaluate(ByItemId(), dm, tmp_path / "bad.parquet")
