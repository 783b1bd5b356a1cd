"""Tests for semid.align: pair mining against a brute-force oracle, probes, and alignment of a tiny random BERT
on synthetic data where two groups of users co-engage two groups of items."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from semid import align as al
from semid.align import ANCHOR, NEXT_ITEM, POSITIVE, AlignConfig
from semid.align.categories import multi_hot
from semid.align.model import build_store
from semid.align.training import AlignModule
from semid.determinism import seeded
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


def test_a_bfloat16_encoder_trains_float32_copies_of_its_top_layers(bert_dir: Path, groups: Groups) -> None:
    items_text = groups[0]
    enc_cfg = EncoderConfig(model=str(bert_dir), batch_size=8, dtype="bfloat16")
    aligned = al.AlignedEncoder(ContentEncoder(enc_cfg), train_layers=1, user_max_length=32)
    assert aligned.encoder.model.dtype == torch.bfloat16
    assert {p.dtype for p in aligned.trainable.parameters()} == {torch.float32}
    hidden, _ = aligned.lower(items_text[:4], max_length=32)
    assert hidden.dtype == torch.float32  # the cached lower states the copies train on
    got = aligned.encode_items(items_text)
    plain = encode(items_text, EncoderConfig(model=str(bert_dir), batch_size=8), progress=False)
    assert got.dtype == torch.float32 and (got * plain).sum(dim=1).min() > 0.99


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


def test_two_thread_gradients_are_bit_identical_run_to_run(bert_dir: Path, groups: Groups) -> None:
    """The ids of a step repeat (an item in several pairs and as a user's next item); their vectors' gradients
    are summed. Summed with parallel float atomics (the backward of `z[inverse]`), the sum's order -- and the
    trained vectors' last bits, then the IDs -- changed run to run at 2 threads; every repeat here must give the
    same bits. (Heavy repetition makes such a race show in a few backward passes of a tiny model.)"""
    items_text = groups[0]
    enc_cfg = EncoderConfig(model=str(bert_dir), batch_size=8)
    aligned = al.AlignedEncoder(ContentEncoder(enc_cfg), train_layers=1, user_max_length=32)
    store = build_store(aligned, items_text, enc_cfg.max_length, progress=False)
    none = torch.empty(0, 2, dtype=torch.long)
    module = AlignModule(
        aligned,
        store,
        n_items=len(items_text),
        cfg=CFG,
        train_pairs=none,
        val_pairs=none,
        train_users=none,
        val_users=none,
    ).eval()  # no dropout: the same input every repeat
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(len(items_text), (4096,), generator=generator)  # each item ~256 times
    weights = torch.randn(4096, aligned.dim, generator=generator)  # (B, D) an arbitrary loss
    grads = []
    with seeded(0, 2):
        for _ in range(8):
            aligned.trainable.zero_grad(set_to_none=True)
            (module._vectors(ids, "item") * weights).sum().backward()
            grads.append(
                torch.cat([p.grad.flatten() for p in aligned.trainable.parameters() if p.grad is not None])
            )
    assert all(torch.equal(grads[0], g) for g in grads[1:])


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


# -- optional objectives: user categories, item popularity (AKT-Rec, issue 14) ---------------------------------


def _group_categories(n_items: int) -> list[list[str]]:
    """Item i: its group ("g0" / "g1", predictable from the users who like it) and "even" for even ids (not)."""
    return [[f"g{i // N_GROUP_ITEMS}"] + (["even"] if i % 2 == 0 else []) for i in range(n_items)]


def test_popularity_levels_are_terciles_of_positive_train_counts() -> None:
    # item i has i positives (i = 1..6); item 0 none; item 7 only a negative: both "new"
    rows = [(u, i, 1, u) for i in range(1, 7) for u in range(i)] + [(0, 7, 0, 9)]
    train = _frame(*map(list, zip(*rows)))
    counts = torch.bincount(train.filter(pl.col(LABEL) == 1)[ITEM].to_torch().long(), minlength=8)
    # terciles of 1..6 (linear): 2.67 and 4.33
    expected = ["new", "low", "low", "medium", "medium", "high", "high", "new"]
    assert al.popularity_levels(counts) == expected
    assert al.popularity_levels(torch.zeros(3, dtype=torch.long)) == ["new"] * 3
    assert al.with_popularity(["a.", "b"], ["high", "new"]) == [
        "a. | popularity: high",
        "b | popularity: new",
    ]
    assert al.with_popularity(["a new item"]) == ["a new item | popularity: new"]


def test_item_stats_the_encoder_sees_the_popularity_words(
    bert_dir: Path, groups: Groups, tmp_path: Path
) -> None:
    items_text, users_text, train, _ = groups
    enc_cfg = EncoderConfig(model=str(bert_dir), batch_size=8)
    cfg = replace(CFG, enabled=False, item_stats=True)
    result = al.align(items_text, users_text, train, enc_cfg, cfg, work_dir=tmp_path, progress=False)
    counts = torch.bincount(
        train.filter(pl.col(LABEL) == 1)[ITEM].to_torch().long(), minlength=len(items_text)
    )
    levels = al.popularity_levels(counts)
    assert {"low", "high"} <= set(levels)  # the toy catalogue has popular and unpopular items
    expected = encode(al.with_popularity(items_text, levels), enc_cfg, progress=False)
    torch.testing.assert_close(result.item_emb, expected, atol=1e-6, rtol=1e-5)
    plain = encode(items_text, enc_cfg, progress=False)
    assert (result.item_emb - plain).abs().max() > 1e-3


def _align_with_categories(groups: Groups, enc_cfg, weight: float, work_dir: Path):
    """`align` on the toy groups with the category objective at `weight` (categories: the item's group)."""
    items_text, users_text, train, _ = groups
    cfg = replace(CFG, user_category_weight=weight, category_column="genre")
    categories = _group_categories(len(items_text))
    return al.align(
        items_text,
        users_text,
        train,
        enc_cfg,
        cfg,
        work_dir=work_dir,
        progress=False,
        item_categories=categories,
    )


def test_category_weight_zero_is_inert(aligned_run: Run, groups: Groups, tmp_path: Path) -> None:
    """Weight 0 with a category column and categories given: the very vectors and probes of the plain run."""
    result, enc_cfg = aligned_run
    again = _align_with_categories(groups, enc_cfg, 0.0, tmp_path)
    assert torch.equal(again.item_emb, result.item_emb) and torch.equal(again.user_emb, result.user_emb)
    assert "val_category_best" not in again.probe
    assert again.probe["val_loss_best"] == result.probe["val_loss_best"]


def test_category_head_learns_predictable_categories(
    aligned_run: Run, groups: Groups, tmp_path: Path
) -> None:
    """The group category of a user's next item is predictable from the user's aligned vector: the held-out
    category loss falls well below the prior's (where the head starts), and the objective moves the encoder."""
    result, enc_cfg = aligned_run
    run = _align_with_categories(groups, enc_cfg, 1.0, tmp_path)
    before, best = run.probe["val_category_before"], run.probe["val_category_best"]
    assert 0.5 < before < 0.75, before  # ~ln 2 per category: the prior of two near-balanced categories
    assert best < 0.8 * before, (before, best)
    assert (run.user_emb - result.user_emb).abs().max() > 1e-3
    assert run.probe["val_loss_best"] < run.probe["val_loss_before"]


def test_item_categories_errors_name_items_parquet_and_the_column(
    bert_dir: Path, groups: Groups, tmp_path: Path
) -> None:
    items = pl.DataFrame({ITEM: [0, 1], TEXT: ["a", "b"], "genre": [["x", "y"], None], "flat": ["x", "y"]})
    assert al.item_categories(items, "genre") == [["x", "y"], []]
    vocabulary, targets = multi_hot([["y", "x"], [], ["y"]])  # sorted vocabulary, one row per item
    assert vocabulary == ["x", "y"] and targets.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    for column, problem in [("nope", "missing"), ("flat", "list\\[str\\]"), (None, "no category column")]:
        with pytest.raises(InputError, match=problem) as err:
            al.item_categories(items, column)
        assert err.value.file == "items.parquet" and err.value.column == column
        assert "category_column" in err.value.fix
    with pytest.raises(InputError, match="holds no category"):
        al.item_categories(items.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("genre")), "genre")
    # align itself refuses before any work (no state written)
    items_text, users_text, train, _ = groups
    cfg = replace(CFG, user_category_weight=0.5, category_column="genre")
    with pytest.raises(InputError, match="categories of all 16 items") as err:
        al.align(
            items_text, users_text, train, EncoderConfig(model=str(bert_dir)), cfg, work_dir=tmp_path / "w"
        )
    assert err.value.file == "items.parquet" and not (tmp_path / "w").exists()


# -- through `semid build` and `semid assign` ------------------------------------------------------------------

TINY_RQ = {"levels": 2, "codebook_size": 4, "max_epochs": 2, "batch_size": 32, "min_level0_utilization": 0.0}


@pytest.fixture(scope="module")
def cold_prepared(synthetic_raw: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic data with 10% of the items held out (no train rows): they read "popularity: new"."""
    from semid import data, synthetic

    files = data.RawFiles(synthetic_raw["inter"], synthetic_raw["item"], synthetic_raw["user"])
    cfg = data.PrepareConfig(split=data.SplitConfig(cold_items=0.1, cold_item_mode="random", seed=0))
    prepared = data.build(files, synthetic.columns(), cfg, name="synthetic")
    return data.write(prepared, tmp_path_factory.mktemp("cold") / "synthetic")


def test_build_refuses_a_missing_category_column_before_any_output(
    prepared_dir: Path, tmp_path: Path
) -> None:
    import pipelines.build_semids as B

    cfg = AlignConfig(user_category_weight=0.5, category_column="nope")
    with pytest.raises(InputError, match="missing") as err:
        B.build(data_dir=str(prepared_dir), out=str(tmp_path / "semids"), align_config=cfg)
    assert err.value.column == "nope" and not (tmp_path / "semids").exists()


def test_assign_renders_new_items_as_popularity_new(
    cold_prepared: Path, bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build with item_stats (and the category objective on `genre`); a new item with the text of a held-out
    item is encoded from "<text> | popularity: new" -- the text the build encoded that item from, so its vector
    is the build's."""
    import pipelines.assign as A
    import pipelines.build_semids as B
    from semid import data
    from semid import schema as S
    from semid.rqvae import RQVAEConfig

    cfg = AlignConfig(
        max_epochs=1,
        max_pairs=200,
        batch_size=64,
        user_max_length=32,
        item_stats=True,
        user_category_weight=0.5,
        category_column="genre",
    )
    out, _ = B.build(
        data_dir=str(cold_prepared),
        out=str(tmp_path / "semids"),
        encoder=EncoderConfig(model=str(bert_dir), batch_size=32, max_length=32),
        align_config=cfg,
        item_rqvae=RQVAEConfig(**TINY_RQ),
        user_rqvae=RQVAEConfig(**TINY_RQ),
    )
    assert "val_category_best" in json.loads((out / "build.json").read_text())["probe"]
    prepared = data.load(cold_prepared)
    held = prepared.meta["held_out_items"][0]
    text = prepared.items.filter(pl.col(ITEM) == held)[TEXT].item()
    seen: list[tuple[list[str], torch.Tensor]] = []
    original = al.AlignedEncoder.encode_items

    def spy(self: al.AlignedEncoder, texts: list[str], images=None) -> torch.Tensor:
        emb = original(self, texts, images)
        seen.append((list(texts), emb))
        return emb

    monkeypatch.setattr(al.AlignedEncoder, "encode_items", spy)
    new = tmp_path / "new.csv"
    pl.DataFrame({ITEM: [prepared.items.height], TEXT: [text]}).write_csv(new)
    A.assign(semids=str(out), items=str(new), out=str(tmp_path / "item_sids.parquet"))
    assert [t for t, _ in seen] == [[f"{text} | popularity: new"]]
    built = pl.read_parquet(out / S.ITEM_EMB_FILE).filter(pl.col(ITEM) == held)[S.EMBEDDING].to_numpy()
    torch.testing.assert_close(seen[0][1], torch.tensor(built, dtype=torch.float32), atol=1e-5, rtol=1e-4)


def test_align_objectives_benchmark_writes_its_table(
    prepared_dir: Path, bert_dir: Path, tmp_path: Path
) -> None:
    """benchmarks/align_objectives.py on the tiny data: one row per variant, and a foreign --out is refused."""
    import yaml

    from benchmarks import align_objectives as bench

    config = tmp_path / "semid.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "encoder": {"model": str(bert_dir), "batch_size": 32, "max_length": 32},
                "align_config": {"max_epochs": 1, "batch_size": 64, "user_max_length": 32},
            }
        )
    )
    out = tmp_path / "table.md"
    args = ["--prepared", str(prepared_dir), "--config", str(config), "--max-pairs", "200", "--out", str(out)]
    bench.main(args)
    text = out.read_text()
    assert text.startswith(bench.TITLE) and "reduced for time" in text
    rows = [
        line for line in text.splitlines() if line.startswith("| ") and "→" in line and "variant" not in line
    ]
    assert [r.split(" | ")[0][2:] for r in rows] == list(bench.VARIANTS)
    assert "n/a → n/a" in rows[0] and "n/a → n/a" not in rows[1]  # category BCE only where it is on
    out.write_text("my notes\n")
    with pytest.raises(SystemExit, match="not an earlier output"):
        bench.main(args)
    assert out.read_text() == "my notes\n"
