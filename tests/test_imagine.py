"""semid.imagine (ReaSeq beyond-log behaviours) and `semid imagine`, on a tiny synthetic catalogue whose users walk
through semantic clusters in order, so the next cluster is predictable from the history."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from semid import ids
from semid import schema as S
from semid.data import load
from semid.errors import InputError
from semid.imagine import (
    CONSISTENCY_FILE,
    IMAGINE_MODEL_FILE,
    IMAGINED_FILE,
    IMAGINED_SCHEMA,
    ImagineConfig,
    ModelConfig,
    SIDDiffusion,
    TrainConfig,
    consistency,
    diffusion_loss,
    fit,
    histories,
    imagine,
    imagine_behaviours,
    item_codes,
    mask_slots,
    prefix_tree,
    seen,
    training_windows,
)
from semid.imagine.model import viable_prefixes
from semid.io import read_meta, write_parquet

pytestmark = pytest.mark.usefixtures("one_thread")

CLUSTERS, PER_CLUSTER, SHARED = 6, 8, 4  # sid_1 = index % SHARED: two items share each tuple (dedup 0 / 1)
DATA_HASH = "synthetic-imagine"
TINY = ModelConfig(d_model=32, layers=2, heads=2, dropout=0.0, max_len=16)
QUICK = TrainConfig(epochs=40, batch_size=32, lr=3e-3, seed=0)


def _interactions(rng: np.random.Generator) -> dict[str, pl.DataFrame]:
    """Each user starts at a random cluster and takes two items per cluster, then moves to the next cluster; the
    first n behaviours are train, the next 4 val/test. Every user also has 2 random train negatives."""
    rows = {name: [] for name in S.SPLITS}
    for user in range(150):
        n_train = int(rng.integers(2, 6)) if user % 3 == 0 else int(rng.integers(8, 14))
        start = int(rng.integers(CLUSTERS))
        seq = []
        for step in range(n_train + 4):
            cluster = (start + step // 2) % CLUSTERS
            choices = [c * PER_CLUSTER + i for c in [cluster] for i in range(PER_CLUSTER)]
            free = [i for i in choices if i not in seq]
            seq.append(int(rng.choice(free)))
        for pos, item in enumerate(seq):
            split = "train" if pos < n_train else ("val" if pos < n_train + 2 else "test")
            rows[split].append((user, item, 1, 1000 * user + pos))
        for neg in rng.choice([i for i in range(CLUSTERS * PER_CLUSTER) if i not in seq], 2, replace=False):
            rows["train"].append((user, int(neg), 0, 1000 * user + 500))
    return {
        name: pl.DataFrame([(*r, None) for r in found], schema=S.INTERACTIONS, orient="row")
        for name, found in rows.items()
    }


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """(prepared dir, semids dir) of the clustered synthetic dataset."""
    root = tmp_path_factory.mktemp("imagine")
    rng = np.random.default_rng(0)
    splits = _interactions(rng)
    n_items, n_users = CLUSTERS * PER_CLUSTER, 150
    meta = {"data_hash": DATA_HASH}
    prepared = root / "prepared"
    items = pl.DataFrame({S.ITEM: np.arange(n_items, dtype=np.int32), S.TEXT: ["x"] * n_items})
    users = pl.DataFrame({S.USER: np.arange(n_users, dtype=np.int32), S.TEXT: ["u"] * n_users})
    write_parquet(items, prepared / S.ITEMS_FILE, meta)
    write_parquet(users, prepared / S.USERS_FILE, meta)
    for name, frame in splits.items():
        write_parquet(frame, prepared / S.split_file(name), meta)
    keys = np.arange(n_items)
    codes = np.stack([keys // PER_CLUSTER, keys % SHARED], axis=1)
    sizes = [CLUSTERS, SHARED]
    table = ids.make_table(keys, codes, key=S.ITEM)
    table_meta = ids.table_meta(
        key=S.ITEM,
        codebook_sizes=sizes,
        health=ids.health(table, sizes),
        encoder="synthetic",
        seed=0,
        data_hash=DATA_HASH,
    )
    semids = root / "semids"
    ids.write_table(table, semids / S.ITEM_SIDS_FILE, table_meta)
    return prepared, semids


@pytest.fixture(scope="module")
def trained(clustered):
    prepared_dir, semids = clustered
    prepared = load(prepared_dir)
    table, meta = ids.read_table(semids / S.ITEM_SIDS_FILE)
    cfg = ImagineConfig(k=4, max_history=5, model=TINY, train=QUICK)
    return prepared, table, meta, imagine_behaviours(prepared, table, meta["codebook_sizes"], cfg)


# -- data ---------------------------------------------------------------------------------------------------


def test_windows_and_histories_follow_time_order():
    train = pl.DataFrame(
        [(0, 5, 1, 30), (0, 3, 1, 10), (0, 4, 0, 15), (0, 7, 1, 20), (0, 9, 1, 40), (1, 2, 1, 5)],
        schema={S.USER: pl.Int32, S.ITEM: pl.Int32, S.LABEL: pl.Int8, S.TIMESTAMP: pl.Int64},
        orient="row",
    )
    known = torch.ones(10, dtype=torch.bool)
    known[7] = False  # no ID: skipped
    windows = training_windows(train, known, max_len=2)
    # user 0 positives in time: 3, (7 skipped), 5, 9 -> windows cut from the newest: [3], [5, 9]; user 1: [2]
    assert sorted(windows.tolist()) == [[2, -1], [3, -1], [5, 9]]
    hist = histories(train, np.array([1, 0, 4]), known, length=2)
    assert hist.tolist() == [[2, -1], [5, 9], [-1, -1]]
    excluded = seen(train, np.array([0]), 10)
    assert excluded[0].nonzero().flatten().tolist() == [3, 4, 5, 7, 9]  # negatives count as seen


def test_item_codes_and_prefix_tree():
    table = ids.make_table(np.arange(4), np.array([[0, 1], [0, 1], [1, 0], [0, 0]]), key=S.ITEM)
    train = pl.DataFrame(
        [(0, 1, 1, 0), (1, 1, 1, 0), (0, 0, 0, 0)],
        schema={S.USER: pl.Int32, S.ITEM: pl.Int32, S.LABEL: pl.Int8, S.TIMESTAMP: pl.Int64},
        orient="row",
    )
    cat = item_codes(table, 5, train, [2, 2])
    assert cat.codes.tolist() == [[0, 1], [0, 1], [1, 0], [0, 0], [0, 0]]
    assert cat.known.tolist() == [True, True, True, True, False]
    assert cat.popularity.tolist() == [0, 2, 0, 0, 0]
    assert cat.order.tolist() == [1, 0, 2, 3, 4]  # most popular first, then by id
    tree = prefix_tree(cat.codes)
    assert tree.prefixes[0].tolist() == [[0], [1]]
    assert tree.index[0].tolist() == [0, 0, 1, 0, 0]


# -- training -----------------------------------------------------------------------------------------------


def test_mask_slots_ratio_and_padding():
    pad = torch.zeros(64, 400, dtype=torch.bool)
    pad[:, 300:] = True
    pad[0] = True  # an all-pad row stays unmasked
    pad[1, 1:] = True  # a one-slot row always gets its slot masked
    masked, t = mask_slots(pad, 0.05, torch.Generator().manual_seed(0))
    assert not (masked & pad).any()
    assert not masked[0].any() and masked[1, 0]
    frac = masked[2:].sum(1) / 300
    assert (frac - t[2:]).abs().max() < 0.1  # each row masks about a fraction t of its real slots
    assert t.min() >= 0.05 and t.max() <= 1


def test_loss_counts_only_masked_slots():
    torch.manual_seed(0)
    model = SIDDiffusion(codebook_sizes=[3, 4], d_model=16, layers=1, heads=2, dropout=0.0, max_len=6).eval()
    codes = torch.stack([torch.randint(0, 3, (2, 6)), torch.randint(0, 4, (2, 6))], -1)  # (2, 6, 2)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    masked = torch.tensor(
        [[True, False, False, True, False, False], [False, True, False, False, False, False]]
    )
    t = torch.tensor([0.5, 0.25])
    loss = diffusion_loss(model, codes, pad, masked, t, "mdlm")
    # oracle: per masked slot, CE of level 0 and of level 1 given the true level-0 code, weighted 1/t / length
    hidden = model.encode(codes, masked, pad)
    expected = 0.0
    for b, s in masked.nonzero().tolist():
        h = hidden[b, s][None]
        ce0 = F.cross_entropy(model.heads[0](h), codes[b, s, :1])
        ce1 = F.cross_entropy(model.heads[1](h + model.prefix_emb[0](codes[b, s, :1])), codes[b, s, 1:])
        expected += (ce0 + ce1) / t[b] / (~pad[b]).sum()
    assert loss.item() == pytest.approx(expected.item() / 2, rel=1e-5)
    unweighted = diffusion_loss(model, codes, pad, masked, t, "none")
    assert unweighted.item() < loss.item()  # 1/t > 1 for every masked slot here
    # the codes a masked slot holds are invisible: it reads MASK, so changing them changes only its target
    other = codes.clone()
    other[0, 1] = (codes[0, 1] + 1) % torch.tensor([3, 4])  # an unmasked slot: context changes
    assert diffusion_loss(model, other, pad, masked, t).item() != pytest.approx(loss.item())
    hidden_masked = model.encode(codes.masked_fill(masked[..., None], 0), masked, pad)
    assert torch.allclose(hidden_masked, hidden)


def test_fit_is_seeded_and_leaves_the_global_rng(clustered):
    prepared = load(clustered[0])
    table, meta = ids.read_table(clustered[1] / S.ITEM_SIDS_FILE)
    train = prepared.splits["train"]
    cat = item_codes(table, CLUSTERS * PER_CLUSTER, train, meta["codebook_sizes"])
    windows = training_windows(train, cat.known, TINY.max_len)[:40]
    cfg = TrainConfig(epochs=2, batch_size=16, seed=3)
    state = torch.random.get_rng_state()
    first = fit(windows, cat.codes, cat.sizes, TINY, cfg)
    assert torch.equal(torch.random.get_rng_state(), state)
    second = fit(windows, cat.codes, cat.sizes, TINY, cfg)
    assert first.losses == second.losses
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    other = fit(windows, cat.codes, cat.sizes, TINY, TrainConfig(epochs=2, batch_size=16, seed=4))
    assert other.losses != first.losses


# -- generation ---------------------------------------------------------------------------------------------


def test_generation_gives_k_real_unseen_distinct_items(trained):
    prepared, table, meta, result = trained
    train = prepared.splits["train"]
    frame = result.imagined
    assert frame.schema == IMAGINED_SCHEMA
    counts = train.filter(pl.col(S.LABEL) == 1).group_by(S.USER).len()
    short = counts.filter(pl.col("len") <= 5)[S.USER].sort().to_list()
    assert frame[S.USER].unique().sort().to_list() == short
    assert frame.group_by(S.USER).agg(pl.col(S.ITEM).n_unique())[S.ITEM].to_list() == [4] * len(short)
    assert frame.group_by(S.USER).agg(pl.col("rank").sort())["rank"].to_list() == [[0, 1, 2, 3]] * len(short)
    assert frame[S.ITEM].is_in(table[S.ITEM].implode()).all()
    assert frame.join(train.select(S.USER, S.ITEM), on=[S.USER, S.ITEM]).is_empty()  # nothing seen in train
    assert frame["imagined"].all()
    assert ((frame["confidence"] > 0) & (frame["confidence"] <= 1)).all()


def test_generation_is_deterministic_and_ties_go_to_the_most_popular(trained):
    prepared, table, meta, result = trained
    train = prepared.splits["train"]
    cat = item_codes(table, CLUSTERS * PER_CLUSTER, train, meta["codebook_sizes"])
    tree = prefix_tree(cat.codes)
    users = np.array([0, 3, 6])
    hist = histories(train, users, cat.known, TINY.max_len - 4)
    exclude = seen(train, users, CLUSTERS * PER_CLUSTER)
    one = imagine(result.model, hist, exclude, cat, tree, k=4, steps=2)
    two = imagine(result.model, hist, exclude, cat, tree, k=4, steps=2)
    assert torch.equal(one.items, two.items) and torch.equal(one.confidence, two.confidence)
    assert sorted(one.step[0].tolist()) == [0, 0, 1, 1]
    # an item of a code tuple is imagined only after its more popular unseen twins (ties -> most popular)
    checked = 0
    for row, user_items in enumerate(one.items.tolist()):
        for item in user_items:
            twins = (cat.codes == cat.codes[item]).all(1) & ~exclude[row]
            better = (twins & (cat.popularity > cat.popularity[item])).nonzero().flatten().tolist()
            assert set(better) <= set(user_items)
            checked += len(better)
    assert checked < len(one.items.reshape(-1))
    with pytest.raises(InputError, match="max_len"):
        imagine(result.model, hist, exclude, cat, tree, k=TINY.max_len)


def test_diffusion_beats_random_and_popularity_on_clustered_users(trained):
    comparison = {row["method"]: row for row in trained[3].comparison.iter_rows(named=True)}
    assert comparison["diffusion"]["users"] == comparison["random"]["users"] > 20
    # random / popularity land in the user's next clusters about 2 times in 6; the walk makes them predictable
    assert comparison["random"]["consistency"] < 0.55
    assert comparison["diffusion"]["consistency"] > comparison["random"]["consistency"] + 0.25
    assert comparison["diffusion"]["consistency"] > comparison["popularity"]["consistency"] + 0.2


def test_consistency_oracle():
    table = ids.make_table(
        np.arange(6), np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]), key=S.ITEM
    )
    future = pl.DataFrame({S.USER: [0, 0, 1], S.ITEM: [0, 2, 5]}, schema={S.USER: pl.Int32, S.ITEM: pl.Int32})
    recs = pl.DataFrame(
        {S.USER: [0, 0, 1, 1, 2], S.ITEM: [1, 4, 5, 0, 3]}, schema={S.USER: pl.Int32, S.ITEM: pl.Int32}
    )
    # user 0: item 1 (cluster 0, in {0, 1}) yes, item 4 (cluster 2) no; user 1: item 5 hit, item 0 no;
    # user 2 has no future behaviours: left out
    assert consistency(recs, future, table) == {
        "users": 2,
        "imagined": 4,
        "consistency": 0.5,
        "hit_rate": 0.25,
        "users_with_hit": 0.5,
    }


# -- the command --------------------------------------------------------------------------------------------


def test_command_writes_owned_output_with_metadata(clustered, tmp_path):
    from pipelines.imagine import COMMAND
    from pipelines.imagine import imagine as run_imagine

    prepared, semids = clustered
    out = tmp_path / "imagined"
    small = TrainConfig(epochs=2, batch_size=32, seed=1)
    run_imagine(str(prepared), str(semids), str(out), k=3, max_history=4, model=TINY, train=small)
    frame = pl.read_parquet(out / IMAGINED_FILE)
    assert frame.schema == IMAGINED_SCHEMA and frame.height % 3 == 0
    meta = read_meta(out / IMAGINED_FILE)
    assert meta["data_hash"] == DATA_HASH and meta["seed"] == 1 and meta["k"] == 3
    assert meta["model"]["d_model"] == TINY.d_model and len(meta["id_table"]["sha256"]) == 64
    report = json.loads((out / CONSISTENCY_FILE).read_text())
    assert [row["method"] for row in report["comparison"]] == ["diffusion", "popularity", "random"]
    assert (out / IMAGINE_MODEL_FILE).is_file()
    assert json.loads((out / S.OUTPUT_MARKER).read_text())["command"] == COMMAND
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers
    # a rerun replaces its own output; a folder of someone else's is refused before any work
    run_imagine(str(prepared), str(semids), str(out), k=3, max_history=4, model=TINY, train=small)
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not empty"):
        run_imagine(str(prepared), str(semids), str(stranger), model=TINY, train=small)
    assert (stranger / "notes.txt").read_text() == "keep"


def test_command_refuses_ids_of_another_dataset(clustered, tmp_path):
    from pipelines.imagine import imagine as run_imagine

    prepared, semids = clustered
    table, meta = ids.read_table(semids / S.ITEM_SIDS_FILE)
    other = tmp_path / "other"
    ids.write_table(table, other / S.ITEM_SIDS_FILE, {**meta, "data_hash": "another"})
    with pytest.raises(InputError, match="data_hash"):
        run_imagine(str(prepared), str(other), str(tmp_path / "out"), model=TINY)
    with pytest.raises(InputError, match="max_len"):
        run_imagine(str(prepared), str(semids), str(tmp_path / "out"), k=16, model=TINY)
    assert not (tmp_path / "out").exists()


# -- beam search over the prefix tree -----------------------------------------------------------------------


def _beam_oracle(model: SIDDiffusion, hidden: torch.Tensor, codes: torch.Tensor, beam: int) -> torch.Tensor:
    """Brute-force beam search, one slot and one prefix at a time: (S, N) log-probs, -inf outside the beam."""
    levels = codes.shape[1]
    out = torch.full((len(hidden), len(codes)), -torch.inf)
    for s, h in enumerate(hidden):

        def logp(prefix: tuple[int, ...], h: torch.Tensor = h) -> torch.Tensor:
            x = h if not prefix else h + model._prefix(torch.tensor(prefix))
            return torch.log_softmax(model.heads[len(prefix)](x), -1)

        kept = {(): 0.0}
        for level in range(levels - 1):
            scores = {}
            for prefix, partial in kept.items():
                step = logp(prefix)
                for item in codes.tolist():
                    child = tuple(item[: level + 1])
                    if tuple(item[:level]) == prefix:
                        scores[child] = partial + step[child[-1]].item()
            kept = dict(sorted(scores.items(), key=lambda kv: -kv[1])[:beam])
        for n, item in enumerate(codes.tolist()):
            prefix = tuple(item[:-1])
            if prefix in kept:
                out[s, n] = kept[prefix] + logp(prefix)[item[-1]].item()
    return out


def test_beam_log_probs_match_a_brute_force_beam_and_the_exact_path():
    torch.manual_seed(0)
    sizes = [5, 4, 3]
    model = SIDDiffusion(codebook_sizes=sizes, d_model=16, layers=1, heads=2, dropout=0.0, max_len=6).eval()
    generator = torch.Generator().manual_seed(1)
    codes = torch.stack([torch.randint(0, k, (60,), generator=generator) for k in sizes], 1)  # (60, 3)
    tree = prefix_tree(codes)
    hidden = torch.randn(7, 16, generator=generator)
    with torch.no_grad():
        exact = model.item_log_probs(hidden, codes, tree)
        widest = max(len(p) for p in tree.prefixes)
        assert torch.allclose(model.item_log_probs(hidden, codes, tree, beam=widest), exact, atol=1e-6)
        for beam in (1, 3):
            got = model.item_log_probs(hidden, codes, tree, beam=beam)
            oracle = _beam_oracle(model, hidden, codes, beam)
            assert torch.equal(got.isfinite(), oracle.isfinite())
            assert torch.allclose(got[got.isfinite()], oracle[oracle.isfinite()], atol=1e-5)
            assert torch.allclose(
                got[got.isfinite()], exact[got.isfinite()], atol=1e-6
            )  # same numbers inside
            assert (got.isfinite().sum(1) < len(codes)).all()  # a real beam: some items are left out
        # a constrained beam keeps only viable prefixes: with one allowed item, beam 1 scores only the items
        # under that item's prefix (items themselves are not masked)
        only = torch.zeros(1, len(codes), dtype=torch.bool)
        only[0, 17] = True
        viable = viable_prefixes(only.expand(len(hidden), -1), tree)
        got = model.item_log_probs(hidden, codes, tree, beam=1, viable=viable)
        assert torch.allclose(got[:, 17], exact[:, 17], atol=1e-6)
        siblings = (codes[:, :2] == codes[17, :2]).all(1)
        assert got[:, siblings].isfinite().all() and not got[:, ~siblings].isfinite().any()
        with pytest.raises(InputError, match="beam"):
            model.item_log_probs(hidden, codes, tree, beam=0)


def test_beam_generation_is_exact_when_wide_and_valid_when_narrow(trained, monkeypatch):
    prepared, table, meta, result = trained
    train = prepared.splits["train"]
    n_items = CLUSTERS * PER_CLUSTER
    cat = item_codes(table, n_items, train, meta["codebook_sizes"])
    tree = prefix_tree(cat.codes)
    users = np.arange(0, 150, 4)
    hist = histories(train, users, cat.known, TINY.max_len - 4)
    exclude = seen(train, users, n_items)
    exact = imagine(result.model, hist, exclude, cat, tree, k=4, steps=2)
    wide = imagine(result.model, hist, exclude, cat, tree, k=4, steps=2, beam=CLUSTERS)
    assert torch.equal(wide.items, exact.items) and torch.equal(wide.step, exact.step)
    assert torch.allclose(wide.confidence, exact.confidence, atol=1e-6)
    # beam 1 with every slot fixed in one step: slots collide on their one kept prefix, and the slots whose
    # allowed items were all taken by the user's other slots are scored again exactly
    for steps in (1, 4):
        narrow = imagine(result.model, hist, exclude, cat, tree, k=4, steps=steps, beam=1)
        again = imagine(result.model, hist, exclude, cat, tree, k=4, steps=steps, beam=1)
        assert torch.equal(narrow.items, again.items) and torch.equal(narrow.confidence, again.confidence)
        for row, items in enumerate(narrow.items.tolist()):
            assert len(set(items)) == 4
            assert not exclude[row, items].any() and cat.known[items].all()
        assert ((narrow.confidence > 0) & (narrow.confidence <= 1)).all()
    assert not torch.equal(narrow.items, exact.items)  # beam 1 is an approximation, not the exact path
    # one allowed item per cluster: the slots' one kept cluster holds one allowed item, so after the first slot
    # takes it the others must fall back to the exact path, and still get distinct allowed items
    sparse = torch.ones_like(exclude)
    sparse[:, ::PER_CLUSTER] = False
    exact_rows = []
    scored = result.model.item_log_probs

    def spy(hidden, codes, tree, *, beam=None, viable=None):
        exact_rows.append(len(hidden) if beam is None else 0)
        return scored(hidden, codes, tree, beam=beam, viable=viable)

    monkeypatch.setattr(result.model, "item_log_probs", spy)
    forced = imagine(result.model, hist, sparse, cat, tree, k=4, steps=1, beam=1)
    assert sum(exact_rows) > 0
    assert all(len(set(items)) == 4 for items in forced.items.tolist())
    assert (forced.items % PER_CLUSTER == 0).all()
    with pytest.raises(InputError, match="beam=0"):
        imagine(result.model, hist, exclude, cat, tree, k=4, beam=0)


def test_command_takes_a_beam(clustered, tmp_path):
    from pipelines.imagine import main

    prepared, semids = clustered
    out = tmp_path / "beam"
    args = [prepared, semids, out, "--k", "3", "--beam", "2", "--train.epochs", "1", "--model.max_len", "16"]
    main([str(a) for a in args])
    meta = read_meta(out / IMAGINED_FILE)
    assert meta["beam"] == 2 and pl.read_parquet(out / IMAGINED_FILE).height % 3 == 0
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in [prepared, semids, tmp_path / "bad", "--beam", "0"]])
    assert exit_info.value.code != 0
    assert not (tmp_path / "bad").exists()
