"""Tests for semid.align: pair mining against a brute-force oracle, probes, and alignment of a tiny random BERT
on synthetic data where two groups of users co-engage two groups of items."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from semid import align as al
from semid.align import ANCHOR, NEXT_ITEM, POSITIVE, AlignConfig
from semid.align.training import AlignModule
from semid.encoder import ContentEncoder, EncoderConfig, encode
from semid.errors import InputError
from semid.schema import ITEM, LABEL, RATING, TEXT, TIMESTAMP, USER

N_GROUP_ITEMS = 8
Groups = tuple[list[str], list[str], pl.DataFrame, pl.DataFrame]  # item texts, user texts, train, within
Run = tuple[al.AlignResult, EncoderConfig]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread


WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "piano",
    "tiger",
    "lamp",
    "forest",
    "window",
    "candle",
    "rocket",
    "violin",
    "mirror",
    "desert",
]


def _frame(users: list[int], items: list[int], labels: list[int], stamps: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {USER: users, ITEM: items, LABEL: labels, TIMESTAMP: stamps, RATING: [None] * len(users)},
        schema={USER: pl.Int32, ITEM: pl.Int32, LABEL: pl.Int8, TIMESTAMP: pl.Int64, RATING: pl.Float32},
    )


def _oracle_pairs(train: pl.DataFrame, window: int) -> list[tuple[int, int, int]]:
    out = []
    rows = train.filter(pl.col(LABEL) == 1).rows(named=True)
    for user in {r[USER] for r in rows}:
        timeline = sorted((r[TIMESTAMP], r[ITEM]) for r in rows if r[USER] == user)
        items = [item for _, item in timeline]
        for i in range(len(items)):
            for j in range(i + 1, min(i + window + 1, len(items))):
                if items[i] != items[j]:
                    out.append((user, items[i], items[j]))
    return sorted(out)


@pytest.mark.parametrize("window", [1, 2, 3])
def test_co_engagement_pairs_match_brute_force(window: int) -> None:
    rng = np.random.default_rng(window)
    n = 60
    train = _frame(
        rng.integers(0, 5, n).tolist(),
        rng.integers(0, 9, n).tolist(),
        rng.integers(0, 2, n).tolist(),
        rng.integers(0, 15, n).tolist(),  # ties in time on purpose: broken by item id
    )
    pairs = al.co_engagement_pairs(train, window)
    assert pairs.columns == [USER, ANCHOR, POSITIVE]
    assert sorted(pairs.rows()) == _oracle_pairs(train, window)


def test_co_engagement_pairs_only_positives_same_user_within_window() -> None:
    train = _frame([0, 0, 0, 0, 1, 1], [1, 2, 3, 4, 5, 6], [1, 0, 1, 1, 1, 1], [1, 2, 3, 4, 1, 2])
    assert sorted(al.co_engagement_pairs(train, 1).rows()) == [(0, 1, 3), (0, 3, 4), (1, 5, 6)]
    assert sorted(al.co_engagement_pairs(train, 5).rows()) == [(0, 1, 3), (0, 1, 4), (0, 3, 4), (1, 5, 6)]


def test_retrieval_recall_matches_brute_force() -> None:
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(12, 4), dim=-1)
    pairs = pl.DataFrame({ANCHOR: [0, 0, 1, 5, 7, 3], POSITIVE: [1, 2, 5, 0, 3, 3]})
    k = 3
    sims = emb @ emb.T
    neighbours = {}
    for a in range(12):
        order = [int(j) for j in torch.argsort(sims[a], descending=True) if int(j) != a]
        neighbours[a] = set(order[:k])
    positives: dict[int, set[int]] = {}
    for a, p in pairs.rows():
        if a != p:
            positives.setdefault(a, set()).add(p)
            positives.setdefault(p, set()).add(a)
    expected = np.mean([len(neighbours[a] & ps) / len(ps) for a, ps in positives.items()])
    assert al.retrieval_recall(emb, pairs, k) == pytest.approx(expected)
    assert al.retrieval_recall(emb, pairs, k, chunk=2) == pytest.approx(expected)
    assert math.isnan(al.retrieval_recall(emb, pairs.head(0), k))


def test_next_item_hit_rate() -> None:
    items = torch.eye(4)
    users = torch.tensor([[1.0, 0.1, 0, 0], [0, 0, 1.0, 0.2]])
    targets = pl.DataFrame({USER: [0, 1], NEXT_ITEM: [1, 0]})
    assert (
        al.next_item_hit_rate(users, items, targets, k=2) == 0.5
    )  # user 0's top-2 = {0, 1}; user 1's {2, 3}
    assert al.next_item_hit_rate(users, items, targets, k=4) == 1.0


def test_user_texts_history_and_targets() -> None:
    items = pl.DataFrame({ITEM: [0, 1, 2, 3], TEXT: ["A.", "B.", "C.", "D."]})
    users = pl.DataFrame({USER: [1, 0, 2], TEXT: ["old man", "young", ""]})
    train = _frame([0, 0, 0, 0, 1, 0], [0, 1, 2, 3, 2, 3], [1, 1, 1, 1, 0, 0], [1, 2, 3, 4, 1, 9])
    texts, targets = al.user_texts(users, items, train, n_recent=2)
    # user 0: positives A B C D in time order; target D, history = the 2 before it, most recent first
    assert texts == ["young. Recently liked: C. | B.", "old man", "user"]
    assert targets.rows() == [(0, 3)]


@pytest.mark.parametrize("n_recent", [1, 2, 5])
def test_user_texts_with_few_positives(n_recent: int) -> None:
    # user u has u + 1 positives (items 0..u in time order): history = the min(u, n_recent) before the last one
    items = pl.DataFrame({ITEM: list(range(6)), TEXT: [f"I{i}" for i in range(6)]})
    users = pl.DataFrame({USER: [0, 1, 2, 3, 4], TEXT: [""] * 5})
    rows = [(u, k, 1, k) for u in range(5) for k in range(u + 1)]
    train = _frame(*map(list, zip(*rows)))
    texts, targets = al.user_texts(users, items, train, n_recent=n_recent)
    expected = ["user"] + [
        "Recently liked: " + " | ".join(f"I{k}" for k in range(u - 1, max(-1, u - 1 - n_recent), -1))
        for u in range(1, 5)
    ]
    assert texts == expected
    assert targets.rows() == [(u, u) for u in range(5)]


# -- alignment on synthetic groups ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_dir(tiny_bert_dir: Path) -> Path:
    return tiny_bert_dir


CFG = AlignConfig(
    train_layers=1,
    window=3,
    temperature=0.1,
    max_pairs=1500,
    batch_size=64,
    lr=1e-2,
    max_epochs=8,
    patience=8,
    user_history=2,
    user_max_length=32,
    holdout=0.15,
    probe_k=5,
    seed=3,
)


@pytest.fixture(scope="module")
def groups() -> Groups:
    """Item texts carry no group signal; users of group g only like items of group g."""
    rng = np.random.default_rng(0)
    n_items, n_users = 2 * N_GROUP_ITEMS, 40
    items_text = [" ".join(rng.choice(WORDS, 3)) + f" number {i}" for i in range(n_items)]
    users_text = [f"person {u} from town {rng.choice(WORDS)}" for u in range(n_users)]
    rows = []
    for u in range(n_users):
        group = u % 2
        liked = rng.permutation(N_GROUP_ITEMS)[:6] + group * N_GROUP_ITEMS
        disliked = rng.permutation(N_GROUP_ITEMS)[:2] + (1 - group) * N_GROUP_ITEMS
        for t, item in enumerate(liked):
            rows.append((u, int(item), 1, 2 * t))
        for t, item in enumerate(disliked):
            rows.append((u, int(item), 0, 2 * t + 1))
    train = _frame(*map(list, zip(*rows)))
    users = pl.DataFrame({USER: range(n_users), TEXT: users_text}, schema={USER: pl.Int32, TEXT: pl.String})
    items = pl.DataFrame({ITEM: range(n_items), TEXT: items_text}, schema={ITEM: pl.Int32, TEXT: pl.String})
    users_text, _ = al.user_texts(users, items, train, n_recent=CFG.user_history)
    within = pl.DataFrame(
        [
            (a, b)
            for a in range(n_items)
            for b in range(n_items)
            if a != b and a // N_GROUP_ITEMS == b // N_GROUP_ITEMS
        ],
        schema=[ANCHOR, POSITIVE],
        orient="row",
    )
    return items_text, users_text, train, within


@pytest.fixture(scope="module")
def aligned_run(bert_dir: Path, groups: Groups, tmp_path_factory: pytest.TempPathFactory) -> Run:
    items_text, users_text, train, _ = groups
    enc_cfg = EncoderConfig(model=str(bert_dir), batch_size=8)
    work = tmp_path_factory.mktemp("align")
    return al.align(items_text, users_text, train, enc_cfg, CFG, work_dir=work, progress=False), enc_cfg


def test_untrained_split_encoder_equals_plain_encoder(bert_dir: Path, groups: Groups) -> None:
    items_text = groups[0]
    enc_cfg = EncoderConfig(model=str(bert_dir), batch_size=8)
    aligned = al.AlignedEncoder(ContentEncoder(enc_cfg), train_layers=1, user_max_length=32)
    assert aligned.mode == "layers" and aligned.split == 1
    torch.testing.assert_close(
        aligned.encode_items(items_text), encode(items_text, enc_cfg, progress=False), atol=1e-5, rtol=1e-4
    )


def test_alignment_raises_within_group_recall(aligned_run: Run, bert_dir: Path, groups: Groups) -> None:
    result, enc_cfg = aligned_run
    items_text, users_text, train, within = groups
    plain = encode(items_text, enc_cfg, progress=False)
    before = al.retrieval_recall(plain, within, k=N_GROUP_ITEMS - 1)
    after = al.retrieval_recall(result.item_emb, within, k=N_GROUP_ITEMS - 1)
    assert after > before + 0.2, (before, after)
    assert result.item_emb.shape == (len(items_text), 32) and result.user_emb.shape == (len(users_text), 32)
    torch.testing.assert_close(result.item_emb.norm(dim=1), torch.ones(len(items_text)))
    # users now retrieve items of their own group
    group_of_nearest = (result.user_emb @ result.item_emb.T).argmax(dim=1) // N_GROUP_ITEMS
    assert (group_of_nearest == torch.arange(len(users_text)) % 2).float().mean() > 0.8
    # (the held-out probe pairs are not asserted: with 8 items a group, held-out pairs serve as in-batch
    # negatives and are pushed apart; on real catalogues this effect vanishes)
    assert result.probe["val_loss_best"] < result.probe["val_loss_before"]


def test_state_round_trip_gives_identical_vectors(aligned_run: Run, groups: Groups) -> None:
    result, enc_cfg = aligned_run
    items_text, users_text = groups[0], groups[1]
    loaded = al.load_aligned_encoder(enc_cfg, result.state_path)
    assert torch.equal(loaded.encode_items(items_text), result.item_emb)
    assert torch.equal(loaded.encode_users(users_text), result.user_emb)
    with pytest.raises(InputError, match="pooling"):
        al.load_aligned_encoder(replace(enc_cfg, pooling="cls"), result.state_path)


def test_same_seed_same_vectors_whatever_the_thread_count(
    aligned_run: Run, groups: Groups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixture ran on 1 caller thread; again on 2: the same vectors (training runs on cfg.threads), and the
    caller's RNG stream and thread count are left as they were (no global reseeding)."""
    result, enc_cfg = aligned_run
    items_text, users_text, train, _ = groups
    seen: list[int] = []
    original = AlignModule.training_step

    def spy(self: AlignModule, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AlignModule, "training_step", spy)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        again = al.align(items_text, users_text, train, enc_cfg, CFG, work_dir=tmp_path, progress=False)
        after, draw = torch.get_num_threads(), torch.rand(3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(again.item_emb, result.item_emb) and torch.equal(again.user_emb, result.user_emb)
    assert seen and set(seen) == {CFG.threads}
    assert after == 2 and torch.equal(draw, expected)


def test_malicious_state_is_refused(aligned_run: Run, tmp_path: Path) -> None:
    _, enc_cfg = aligned_run
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "aligned_encoder.pt"
    torch.save({"format": 1, "state_dict": Payload()}, path)
    with pytest.raises(InputError, match="refused") as info:
        al.load_aligned_encoder(enc_cfg, path)
    assert info.value.file == str(path) and not marker.exists()
    path.write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable aligned encoder state"):
        al.load_aligned_encoder(enc_cfg, path)


def test_disabled_gives_plain_vectors_and_probe(bert_dir: Path, groups: Groups, tmp_path: Path) -> None:
    items_text, users_text, train, _ = groups
    enc_cfg = EncoderConfig(model=str(bert_dir), batch_size=8)
    result = al.align(
        items_text, users_text, train, enc_cfg, replace(CFG, enabled=False), work_dir=tmp_path, progress=False
    )
    torch.testing.assert_close(
        result.item_emb, encode(items_text, enc_cfg, progress=False), atol=1e-6, rtol=1e-5
    )
    assert result.probe["item_recall@5_after"] == result.probe["item_recall@5_before"]
    loaded = al.load_aligned_encoder(enc_cfg, result.state_path)
    assert torch.equal(loaded.encode_items(items_text), result.item_emb)


def test_ids_beyond_texts_raise(bert_dir: Path, groups: Groups, tmp_path: Path) -> None:
    items_text, users_text, train, _ = groups
    with pytest.raises(InputError, match="item_id"):
        al.align(
            items_text[:3], users_text, train, EncoderConfig(model=str(bert_dir)), CFG, work_dir=tmp_path
        )


def test_heads_only_trains_on_cached_frozen_vectors(bert_dir: Path, groups: Groups, tmp_path: Path) -> None:
    """train_layers=0 (the mode images and non-BERT encoders use): frozen vectors from `encode` (cached), only
    the heads trained, and the saved state reproduces the vectors."""
    items_text, users_text, train, within = groups
    enc_cfg = EncoderConfig(model=str(bert_dir), batch_size=8)
    result = al.align(
        items_text,
        users_text,
        train,
        enc_cfg,
        replace(CFG, train_layers=0),
        work_dir=tmp_path / "work",
        cache=tmp_path / "cache",
        progress=False,
    )
    assert result.probe["trained_layers"] == 0 and result.probe["epochs"] >= 1
    assert result.probe["val_loss_best"] < result.probe["val_loss_before"]
    assert len(list((tmp_path / "cache").glob("embeddings-*.parquet"))) == 2  # items, users (own token cap)
    plain = encode(items_text, enc_cfg, progress=False)
    assert (result.item_emb - plain).abs().max() > 1e-3  # the item head moved the vectors
    loaded = al.load_aligned_encoder(enc_cfg, result.state_path)
    assert loaded.mode == "head"
    torch.testing.assert_close(loaded.encode_items(items_text), result.item_emb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loaded.encode_users(users_text), result.user_emb, atol=1e-5, rtol=1e-4)
