"""Amazon Food / Kitchen as two scenarios (issue 16): the reader's `domains` option on a tiny synthetic release
(tests/test_protocols.py's), the amazon-domain scenario rule over it, the prompts, and the shipped pipeline config."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import polars as pl
import pytest

from semid import amazon, data
from semid import scenarios as SC
from semid import schema as S
from semid.errors import InputError
from semid.io import sha256_json
from semid.knowledge import msr
from tests.test_protocols import N_FOOD, N_KITCHEN, _cfg, _write_release

BOTH = ["food", "kitchen"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

DEFAULT_DIGEST = "60c8a30f882adb6b4bf938d99e617d2356bac0386521ea51e4e7180fdd185ab8"
"""`_digest` of the default build of `_write_release(seed 0)` with `_cfg()`, computed with the reader as it was
before the `domains` option (commit 0d7e161): the default must keep producing exactly these rows. (The negatives
depend on polars' join order, as before the option; the same under 1 to 8 polars threads with polars 2.1.)"""


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_release(tmp_path_factory.mktemp("amazon_scen") / "food-kitchen")


@pytest.fixture(scope="module")
def files(release: Path) -> dict[str, Path]:
    return amazon.source_files(release)


@pytest.fixture(scope="module")
def default(files: dict[str, Path]) -> data.Prepared:
    return amazon.build(files, _cfg())


@pytest.fixture(scope="module")
def both(files: dict[str, Path]) -> data.Prepared:
    return amazon.build(files, _cfg(), domains=BOTH)


def _digest(p: data.Prepared) -> str:
    h = hashlib.sha256()
    for split in S.SPLITS:
        h.update(json.dumps(p.splits[split].rows()).encode())
    h.update(json.dumps(p.users.select(S.USER, S.RAW_USER).rows()).encode())
    h.update(json.dumps(p.extras[amazon.SOURCE_HISTORY].rows()).encode())
    return h.hexdigest()


def _events(release: Path) -> pl.DataFrame:
    """Oracle: every event of the train files, read line by line in Python: (raw user, item, position, domain)."""
    rows = []
    for tag, name in amazon.TRAIN_FILES.items():
        for line in (release / name).read_text().splitlines():
            user, seq = line.split("\t")
            items = [int(x) for x in seq.split(",") if x]
            rows += [
                (f"{tag}_{user}", i, pos, "food" if i < N_FOOD else "kitchen") for pos, i in enumerate(items)
            ]
    return pl.DataFrame(rows, schema=["raw", "item", "pos", "domain"], orient="row")


def _positives(p: data.Prepared) -> dict[str, pl.DataFrame]:
    """Positives per split as (raw user, item, timestamp)."""
    users = p.users.select(S.USER, S.RAW_USER)
    return {
        split: df.filter(pl.col(S.LABEL) == 1).join(users, on=S.USER).select(S.RAW_USER, S.ITEM, S.TIMESTAMP)
        for split, df in p.splits.items()
    }


def test_default_is_unchanged(files: dict[str, Path], default: data.Prepared) -> None:
    assert _digest(default) == DEFAULT_DIGEST
    old_hash = sha256_json(
        {
            "schema": S.SCHEMA_VERSION,
            "dataset": amazon.DATASET,
            "inputs": {role: amazon.sha256_file(p) for role, p in files.items()},
            "config": asdict(_cfg()),
        }
    )
    assert default.meta["data_hash"] == amazon.fingerprint(files, _cfg()) == old_hash
    explicit = amazon.build(files, _cfg(), domains=["kitchen"])
    assert _digest(explicit) == DEFAULT_DIGEST and explicit.meta["data_hash"] == old_hash
    assert default.meta["domains"] == ["kitchen"]


def test_both_domains_are_rows_split_per_user_and_domain(release: Path, both: data.Prepared) -> None:
    oracle = _events(release)
    pos = _positives(both)
    got = sorted(pl.concat(pos.values()).iter_rows())
    assert got == sorted(oracle.select("raw", "item", "pos").iter_rows())  # every event of both domains, once
    assert set(both.users[S.RAW_USER]) == set(oracle["raw"])  # train_A's food-only users too
    for (raw, _), g in oracle.group_by("raw", "domain"):
        g = g.sort("pos")
        mine = {
            s: pos[s]
            .filter((pl.col(S.RAW_USER) == raw) & pl.col(S.ITEM).is_in(g["item"].implode()))[S.ITEM]
            .to_list()
            for s in S.SPLITS
        }
        if g.height >= 3:
            assert mine["test"] == [g["item"][-1]] and mine["val"] == [g["item"][-2]]
        else:
            assert mine["test"] == mine["val"] == []
    for split in S.SPLITS:  # both scenarios are held out
        items = pos[split][S.ITEM]
        assert (items < N_FOOD).any() and (items >= N_FOOD).any(), split
    assert both.extras[amazon.SOURCE_HISTORY].is_empty()
    assert both.extras[amazon.SOURCE_HISTORY].schema == pl.Schema(
        {S.RAW_USER: pl.String, S.USER: pl.Int32, S.ITEM: pl.Int32, S.TIMESTAMP: pl.Int64}
    )
    assert not (both.items.head(N_FOOD)[S.BUCKET] == "cold").all()  # food items have train rows now


def test_negatives_stay_in_their_positives_domain(release: Path, both: data.Prepared) -> None:
    oracle = _events(release)
    bought = {raw: set(g["item"]) for (raw,), g in oracle.group_by("raw")}
    raw_of = dict(both.users.select(S.USER, S.RAW_USER).iter_rows())
    food = pl.col(S.ITEM) < N_FOOD
    for df in both.splits.values():
        pos = df.filter(pl.col(S.LABEL) == 1).select(S.USER, S.TIMESTAMP, food.alias("pos_food"))
        neg = df.filter(pl.col(S.LABEL) == 0)
        assert neg.height == 3 * pos.height
        paired = neg.join(pos, on=[S.USER, S.TIMESTAMP], how="left")  # one positive per (user, position)
        assert paired["pos_food"].null_count() == 0
        assert paired.select((food == pl.col("pos_food")).all()).item()  # in-scenario negatives
        assert ((paired[S.ITEM] >= 0) & (paired[S.ITEM] < N_FOOD + N_KITCHEN)).all()
        for user, item in neg.select(S.USER, S.ITEM).iter_rows():
            assert item not in bought[raw_of[user]]
        per = neg.group_by(S.USER, S.TIMESTAMP).agg(pl.col(S.ITEM).n_unique().alias("k"), pl.len().alias("n"))
        assert (per["k"] == 3).all() and (per["n"] == 3).all()


def test_kitchen_positives_are_the_default_ones(default: data.Prepared, both: data.Prepared) -> None:
    """Same Kitchen positives in the same splits (only the dense user ids differ), as many Kitchen negatives, and
    the same ranking tables; the negatives themselves are other seeded draws (row order differs)."""
    pos_default, pos_both = _positives(default), _positives(both)
    for split in S.SPLITS:
        kitchen = pos_both[split].filter(pl.col(S.ITEM) >= N_FOOD)
        assert sorted(kitchen.rows()) == sorted(pos_default[split].rows())
        n_neg = [
            p.splits[split].filter((pl.col(S.ITEM) >= N_FOOD) & (pl.col(S.LABEL) == 0)).height
            for p in (default, both)
        ]
        assert n_neg[0] == n_neg[1] == 3 * kitchen.height
    for table in amazon.RANKING.values():
        assert both.extras[table].equals(default.extras[table])


def test_domains_hash_and_order(files: dict[str, Path], both: data.Prepared) -> None:
    assert (
        both.meta["data_hash"] == amazon.fingerprint(files, _cfg(), BOTH) != amazon.fingerprint(files, _cfg())
    )
    assert amazon.fingerprint(files, _cfg(), ["kitchen", "food"]) == both.meta["data_hash"]
    again = amazon.build(files, _cfg(), domains=["kitchen", "food"])
    assert all(again.splits[s].equals(both.splits[s]) for s in S.SPLITS)  # seeded and order-free
    assert both.meta["domains"] == BOTH


@pytest.mark.parametrize("bad", [[], ["books"], ["food"], ["kitchen", "kitchen"], ["food", "Kitchen"]])
def test_bad_domains_are_one_input_error(files: dict[str, Path], bad: list[str]) -> None:
    with pytest.raises(InputError, match=r"^domains \[") as err:
        amazon.build(files, _cfg(), domains=bad)
    assert "[food, kitchen]" in err.value.fix
    with pytest.raises(InputError, match=r"^domains \["):
        amazon.fingerprint(files, _cfg(), bad)


def test_amazon_domain_rule_gives_two_scenarios_and_sane_prompts(both: data.Prepared, tmp_path: Path) -> None:
    prepared = data.write(both, tmp_path / "prepared")
    back = data.load(prepared)
    history = pl.read_parquet(prepared / f"{amazon.SOURCE_HISTORY}.parquet")
    assert history.is_empty() and history.schema == both.extras[amazon.SOURCE_HISTORY].schema
    scen = SC.from_prepared(prepared, "amazon-domain")
    assert scen.names == ("food", "kitchen") and scen.key == S.ITEM
    for split in S.SPLITS:
        counts = dict(SC.with_scenario(back.splits[split], scen).group_by(SC.SCENARIO).len().iter_rows())
        assert set(counts) == {0, 1} and min(counts.values()) > 0, split
    train = back.splits["train"]
    cfg = msr.PromptConfig(top_k=2, recent=2)
    prompts = msr.scenario_prompts(train, back.items, scen, cfg, rule_column="domain").prompts
    assert len(prompts) == 2
    assert all(
        "genres" not in p and "none" not in p for p in prompts
    )  # the domain is the scenario, not a genre
    assert "- food: " in prompts[0] and "- kitchen: " in prompts[0] and "snack number" in prompts[0]
    users = msr.user_prompts(train, back.items, back.users, scen, cfg).prompts
    assert any("- food: " in p and "- kitchen: " in p for p in users)


def test_pipeline_config_parses() -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    from pipelines.run import run

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(run)
    cfg = parser.parse_args(["--config", str(CONFIGS / "pipeline" / "amazon-scenarios.yaml")])
    ml = parser.parse_args(["--config", str(CONFIGS / "pipeline" / "ml-1m-scenarios.yaml")])
    assert cfg.prepare.dataset == amazon.DATASET and cfg.prepare.domains == BOTH
    assert (
        cfg.scenarios.rule == "amazon-domain" and SC.resolve_rule(cfg.scenarios.rule).column == amazon.DOMAIN
    )
    assert cfg.scenarios.knowledge == ml.scenarios.knowledge == ["llm", "prompt_text"]
    assert [(m.name, m.config) for m in cfg.models] == [(m.name, m.config) for m in ml.models]
    assert cfg.target == "meta_llm" and cfg.prepare.split.mode == "leave_last_out"
    root = CONFIGS.parent
    assert all((root / ref).is_file() for ref in [cfg.semids, *cfg.common, *(m.config for m in cfg.models)])


def test_prepare_takes_domains_and_refuses_bad_ones_before_writing(release: Path, tmp_path: Path) -> None:
    from pipelines.prepare import prepare

    out = prepare(
        negatives=_cfg().negatives,
        dataset=amazon.DATASET,
        source=str(release),
        domains=BOTH,
        out=str(tmp_path / "ok"),
        cache=str(tmp_path),
    )
    assert data.load(out).meta["domains"] == BOTH
    with pytest.raises(InputError, match=r"^domains \['books'\]"):
        prepare(dataset=amazon.DATASET, source=str(release), domains=["books"], out=str(tmp_path / "bad"))
    with pytest.raises(InputError, match="domains is an option of the amazon-food-kitchen dataset only"):
        prepare(dataset="ml-100k", domains=BOTH, out=str(tmp_path / "ml"), cache=str(tmp_path))
    assert not (tmp_path / "bad").exists() and not (tmp_path / "ml").exists()
