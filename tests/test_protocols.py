"""Long-tail protocols: the amazon-food-kitchen reader (on a tiny synthetic release), item cold-start, absolute
tail buckets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from semid import amazon, data, synthetic
from semid import schema as S
from semid.errors import InputError

N_FOOD, N_KITCHEN = 30, 60


def _write_release(root: Path, seed: int = 0) -> Path:
    """A release in the LLMCDSR layout: items.tsv, train_A/B/overlap.txt, valid.txt, test.txt (trailing comma on
    some lines, as in the real files)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ids = np.arange(N_FOOD + N_KITCHEN)
    pl.DataFrame(
        {
            "item_id": ids,
            "domain": ["food"] * N_FOOD + ["kitchen"] * N_KITCHEN,
            "asin": [f"B{i:05d}" for i in ids],
            "title": [f"{'snack' if i < N_FOOD else 'pan'} number {i}" for i in ids],
        }
    ).write_csv(root / "items.tsv", separator="\t")

    def lines(n_users: int, pool: np.ndarray, lo: int, hi: int) -> str:
        out = []
        for u in range(1, n_users + 1):
            seq = rng.choice(pool, rng.integers(lo, hi), replace=False)
            out.append(f"{u}\t{','.join(map(str, seq))}{',' if u % 3 == 0 else ''}")
        return "\n".join(out) + "\n"

    food, kitchen = ids[:N_FOOD], ids[N_FOOD:]
    (root / "train_A.txt").write_text(lines(5, food, 2, 6))
    (root / "train_B.txt").write_text(lines(12, kitchen, 1, 9))
    (root / "train_overlap.txt").write_text(lines(8, ids, 4, 12))
    (root / "valid.txt").write_text(lines(6, ids, 3, 8))
    (root / "test.txt").write_text(lines(6, ids, 3, 8))
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_release(tmp_path_factory.mktemp("amazon") / "food-kitchen")


def _cfg(per_positive: int = 3, ranking: int = 20, seed: int = 0) -> data.PrepareConfig:
    return data.PrepareConfig(
        negatives=data.NegativeConfig(per_positive=per_positive, ranking=ranking, seed=seed)
    )


@pytest.fixture(scope="module")
def built(release: Path) -> data.Prepared:
    return amazon.build(amazon.source_files(release), _cfg())


def _kitchen_events(release: Path) -> pl.DataFrame:
    """Oracle: the train files' kitchen events, read line by line in Python."""
    rows = []
    for tag, name in (("B", "train_B.txt"), ("O", "train_overlap.txt")):
        for line in (release / name).read_text().splitlines():
            user, seq = line.split("\t")
            items = [int(x) for x in seq.split(",") if x]
            rows += [(f"{tag}_{user}", i, pos) for pos, i in enumerate(items) if i >= N_FOOD]
    return pl.DataFrame(rows, schema=["raw", "item", "pos"], orient="row")


def test_amazon_leave_last_out_on_kitchen_positions(release: Path, built: data.Prepared) -> None:
    oracle = _kitchen_events(release)
    users = built.users.select(S.USER, S.RAW_USER)
    pos = {
        s: df.filter(pl.col(S.LABEL) == 1).join(users, on=S.USER).select(S.RAW_USER, S.ITEM, S.TIMESTAMP)
        for s, df in built.splits.items()
    }
    got = sorted(pl.concat(pos.values()).iter_rows())
    assert got == sorted(oracle.iter_rows())  # item dense id == global id; timestamp == position
    for raw, g in oracle.group_by("raw"):
        g = g.sort("pos")
        mine = {s: pos[s].filter(pl.col(S.RAW_USER) == raw[0])[S.ITEM].to_list() for s in S.SPLITS}
        if g.height >= 3:
            assert mine["test"] == [g["item"][-1]] and mine["val"] == [g["item"][-2]]
        else:
            assert mine["test"] == mine["val"] == []
    assert set(built.users[S.RAW_USER].str.slice(0, 2)) <= {
        "B_",
        "O_",
    }  # food-only users are not target users


def test_amazon_negatives(release: Path, built: data.Prepared) -> None:
    oracle = _kitchen_events(release)
    raw_of = dict(built.users.select(S.USER, S.RAW_USER).iter_rows())
    bought = {raw: set(g["item"]) for (raw,), g in oracle.group_by("raw")}
    for df in built.splits.values():
        pos = df.filter(pl.col(S.LABEL) == 1)
        neg = df.filter(pl.col(S.LABEL) == 0)
        assert neg.height == 3 * pos.height
        assert ((neg[S.ITEM] >= N_FOOD) & (neg[S.ITEM] < N_FOOD + N_KITCHEN)).all()  # kitchen items
        for user, item in neg.select(S.USER, S.ITEM).iter_rows():
            assert item not in bought[raw_of[user]]
        # every negative sits at one of its user's positive timestamps, 3 distinct items per positive
        per = neg.group_by(S.USER, S.TIMESTAMP).agg(pl.col(S.ITEM).n_unique().alias("k"), pl.len().alias("n"))
        assert (per["k"] == 3).all() and (per["n"] == 3).all()
        assert per.join(pos, on=[S.USER, S.TIMESTAMP], how="anti").is_empty()
        assert df.schema == S.INTERACTIONS
    again = amazon.build(amazon.source_files(release), _cfg())
    other = amazon.build(amazon.source_files(release), _cfg(seed=1))
    assert all(again.splits[s].equals(built.splits[s]) for s in S.SPLITS)  # seeded: identical
    assert not other.splits["train"].equals(built.splits["train"])


def test_amazon_items_users_and_source_history(release: Path, built: data.Prepared) -> None:
    items = built.items
    assert items[S.ITEM].to_list() == list(range(N_FOOD + N_KITCHEN))
    assert items[S.RAW_ITEM].to_list() == [str(i) for i in range(N_FOOD + N_KITCHEN)]
    assert items[amazon.DOMAIN].to_list() == [["food"]] * N_FOOD + [["kitchen"]] * N_KITCHEN
    assert items[S.TEXT][N_FOOD] == f"pan number {N_FOOD}"
    train_pos = built.splits["train"].filter(pl.col(S.LABEL) == 1)
    counts = dict(train_pos.group_by(S.ITEM).len().iter_rows())
    assert items[S.TRAIN_COUNT].to_list() == [counts.get(i, 0) for i in range(items.height)]  # positives only
    assert (items.head(N_FOOD)[S.BUCKET] == "cold").all()
    # source history: every food event of the train files, user ids where the user has kitchen events
    hist = built.extras[amazon.SOURCE_HISTORY]
    assert (hist[S.ITEM] < N_FOOD).all()
    a_users = hist.filter(pl.col(S.RAW_USER).str.starts_with("A_"))
    assert a_users.height > 0 and a_users[S.USER].null_count() == a_users.height
    o_users = hist.filter(pl.col(S.RAW_USER).str.starts_with("O_"))
    assert o_users[S.USER].null_count() == 0


def test_amazon_ranking_candidates(release: Path, built: data.Prepared) -> None:
    for split, name in amazon.RANKING.items():
        table = built.extras[name]
        lines = {
            f"{split}_{u}": [int(x) for x in seq.split(",") if x]
            for u, seq in (ln.split("\t") for ln in (release / f"{split}.txt").read_text().splitlines())
        }
        kitchen_targets = {u: s for u, s in lines.items() if s[-1] >= N_FOOD}
        assert set(table[S.RAW_USER]) == set(kitchen_targets)
        for user, history, target, negatives in table.iter_rows():
            assert history == kitchen_targets[user][:-1] and target == kitchen_targets[user][-1]
            assert len(negatives) == len(set(negatives)) == 20
            assert all(N_FOOD <= n < N_FOOD + N_KITCHEN and n not in kitchen_targets[user] for n in negatives)


def test_amazon_bad_source(tmp_path: Path, release: Path) -> None:
    with pytest.raises(InputError, match="release folder is missing"):
        amazon.source_files(tmp_path / "nowhere")
    broken = _write_release(tmp_path / "broken")
    (broken / "test.txt").unlink()
    with pytest.raises(InputError, match="file not found"):
        amazon.source_files(broken)
    (broken / "test.txt").write_text("1\t31,x\n")
    with pytest.raises(InputError, match="integers"):
        amazon.build(amazon.source_files(broken), _cfg())
    (broken / "test.txt").write_text("1\t31,999\n")
    with pytest.raises(InputError, match="not in items.tsv"):
        amazon.build(amazon.source_files(broken), _cfg())


def test_amazon_prepared_dir_round_trip(built: data.Prepared, tmp_path: Path) -> None:
    out = data.write(built, tmp_path / "prep")
    back = data.load(out)
    assert back.items.equals(built.items) and back.splits["test"].equals(built.splits["test"])
    assert pl.read_parquet(out / f"{amazon.RANKING['test']}.parquet").equals(
        built.extras[amazon.RANKING["test"]]
    )
    from semid.io import read_meta

    assert read_meta(out / S.ITEMS_FILE)["features"] == [amazon.DOMAIN]
    assert read_meta(out / S.USERS_FILE)["features"] == []


@pytest.mark.realdata
def test_real_amazon_food_kitchen() -> None:
    source = amazon.default_source()
    if not source.is_dir():
        pytest.skip(f"{source} not present")
    p = amazon.build(amazon.source_files(source), data.PrepareConfig())
    assert p.meta["n_users"] == 45_692 and p.items.height == 36_298
    assert (
        p.meta["extras"][amazon.RANKING["valid"]] == 597 and p.meta["extras"][amazon.RANKING["test"]] == 637
    )
    assert p.meta["splits"]["test"] == 5 * 45_692


# -- ml cold-start and absolute tails (synthetic) ----------------------------------------------------------


def _files(raw) -> data.RawFiles:
    return data.RawFiles(raw["inter"], raw["item"], raw["user"])


@pytest.mark.parametrize("mode", ["random", "newest"])
def test_cold_items_lose_train_rows_only(synthetic_raw, mode) -> None:
    base = data.build(_files(synthetic_raw), synthetic.columns(), data.PrepareConfig(), name="s")
    cfg = data.PrepareConfig(split=data.SplitConfig(cold_items=0.1, cold_item_mode=mode, seed=3))
    p = data.build(_files(synthetic_raw), synthetic.columns(), cfg, name="s")
    held = p.meta["held_out_items"]
    n_items = pl.concat(base.splits.values())[S.ITEM].n_unique()
    assert len(held) == round(0.1 * n_items)
    assert p.splits["train"].filter(pl.col(S.ITEM).is_in(held)).is_empty()
    assert p.splits["train"].equals(base.splits["train"].filter(~pl.col(S.ITEM).is_in(held)))
    for s in ("val", "test"):
        assert p.splits[s].equals(base.splits[s])  # their val/test rows stay
    assert (p.items.filter(pl.col(S.ITEM).is_in(held))[S.BUCKET] == "cold").all()
    assert (p.items.filter(pl.col(S.ITEM).is_in(held))[data.ABS_BUCKET] == "cold").all()
    if mode == "newest":
        first = pl.concat(base.splits.values()).group_by(S.ITEM).agg(pl.col(S.TIMESTAMP).min())
        cut = first.filter(pl.col(S.ITEM).is_in(held))[S.TIMESTAMP].min()
        assert first.filter(~pl.col(S.ITEM).is_in(held))[S.TIMESTAMP].max() <= cut
    else:
        other = data.build(
            _files(synthetic_raw),
            synthetic.columns(),
            replace(cfg, split=replace(cfg.split, seed=4)),
            name="s",
        )
        assert other.meta["held_out_items"] != held


def test_absolute_tail_buckets(synthetic_raw) -> None:
    cfg = data.PrepareConfig(buckets=data.BucketConfig(item_tail_below=40, user_tail_below=25))
    p = data.build(_files(synthetic_raw), synthetic.columns(), cfg, name="s")
    for table, below in ((p.items, 40), (p.users, 25)):
        n = table[S.TRAIN_COUNT]
        expected = (
            pl.when(n == 0)
            .then(pl.lit("cold"))
            .when(n < below)
            .then(pl.lit("tail"))
            .otherwise(pl.lit("head"))
        )
        assert table[data.ABS_BUCKET].to_list() == table.select(expected)["literal"].to_list()
        assert set(table[data.ABS_BUCKET]) >= {"head", "tail"}
    assert sum(p.meta["item_abs_buckets"].values()) == p.items.height
