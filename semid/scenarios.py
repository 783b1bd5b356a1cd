"""Scenarios as data: a rule maps each user (or item) of a prepared dataset to one scenario, so every interaction
gets a `scenario` code (multi-scenario CTR: STAR, LLM4MSR).

Two shipped rules: ML-1M users by age group as in the Scenario-Wise-Rec benchmark ({1, 18} / {25} /
{35, 45, 50, 56}) and Amazon items by domain (food / kitchen). A rule reads one single-valued side feature of
`users.parquet` or `items.parquet`; the scenario code is the group's position in `groups`. The per-entity table
is written once as `scenarios.parquet` (key column + `scenario`, the names and the rule in its metadata) and
networks index it by `batch.user` / `batch.item` (see ctr/scenario.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import polars as pl

from semid import schema as S
from semid.datasets import SOURCES
from semid.errors import InputError
from semid.io import read_meta, write_parquet

SCENARIO = "scenario"  # Int32 scenario code, 0..n_scenarios-1
SCENARIOS_FILE = "scenarios.parquet"
Side = Literal["user", "item"]


@dataclass(frozen=True)
class ScenarioRule:
    """Scenario of an entity = the group holding the value of its side feature `column`.

    groups: scenario name -> the feature values that belong to it, in scenario-code order.
    default: the scenario of values in no group; None refuses them (one error listing them).
    """

    side: Side = "user"
    column: str = "age"
    groups: dict[str, list[str]] = field(default_factory=dict)
    default: str | None = None


def _ml1m_age_groups() -> dict[str, list[str]]:
    """Raw ML-1M age codes and the labels `semid prepare` maps them to (both accepted)."""
    labels = SOURCES["ml-1m"].columns.value_maps["age"]
    codes = {"age_under_25": ["1", "18"], "age_25_34": ["25"], "age_35_plus": ["35", "45", "50", "56"]}
    return {name: [v for c in cs for v in (c, labels[c])] for name, cs in codes.items()}


RULES: dict[str, ScenarioRule] = {
    "ml-1m-age": ScenarioRule(side="user", column="age", groups=_ml1m_age_groups()),
    "amazon-domain": ScenarioRule(
        side="item", column="domain", groups={"food": ["food"], "kitchen": ["kitchen"]}
    ),
}
"""The shipped protocols, by name (Scenario-Wise-Rec ML-1M age groups; Amazon Food / Kitchen domains)."""


class Scenarios(NamedTuple):
    table: pl.DataFrame  # key (user_id or item_id) Int32, scenario Int32; one row per entity
    names: tuple[str, ...]  # scenario code -> name
    key: str  # schema.USER or schema.ITEM


def resolve_rule(rule: str | ScenarioRule) -> ScenarioRule:
    if isinstance(rule, ScenarioRule):
        return rule
    if rule not in RULES:
        raise InputError(
            f"unknown scenario rule {rule!r}", fix=f"use one of {sorted(RULES)} or a ScenarioRule"
        )
    return RULES[rule]


def _check_rule(rule: ScenarioRule) -> None:
    if not rule.groups:
        raise InputError("the scenario rule has no groups", fix="give groups: {name: [values, ...], ...}")
    seen: dict[str, str] = {}
    for name, values in rule.groups.items():
        for v in values:
            if v in seen and seen[v] != name:
                raise InputError(
                    f"value {v!r} is in scenario groups {seen[v]!r} and {name!r}",
                    column=rule.column,
                    fix="put each value in one group only",
                )
            seen[v] = name
    if rule.default is not None and rule.default not in rule.groups:
        raise InputError(
            f"default scenario {rule.default!r} is not a group", fix=f"use one of {list(rule.groups)}"
        )


def assign(entities: pl.DataFrame, rule: ScenarioRule, *, file: str | Path | None = None) -> Scenarios:
    """Scenario of every row of a users / items table (as in a prepared dataset: the feature is List(String))."""
    _check_rule(rule)
    key = S.USER if rule.side == "user" else S.ITEM
    if rule.column not in entities.columns:
        raise InputError(
            f"the {rule.side}s table has no column {rule.column!r} for the scenario rule",
            file=file,
            column=rule.column,
            fix=f"prepare the data with {rule.column!r} as a {rule.side} feature, or change the rule's column",
        )
    col = pl.col(rule.column)
    value = col.list.first() if isinstance(entities.schema[rule.column], pl.List) else col.cast(pl.String)
    multi = entities.filter(col.list.len() > 1) if isinstance(entities.schema[rule.column], pl.List) else None
    if multi is not None and multi.height:
        raise InputError(
            f"{multi.height} {rule.side}s have several values, a scenario needs one",
            file=file,
            column=rule.column,
            fix="use a single-valued feature for the scenario rule",
        )
    code_of = {v: i for i, vs in enumerate(rule.groups.values()) for v in vs}
    default = None if rule.default is None else list(rule.groups).index(rule.default)
    table = entities.select(
        pl.col(key).cast(pl.Int32),
        value.replace_strict(code_of, default=default, return_dtype=pl.Int32).alias(SCENARIO),
        value.alias("_value"),
    )
    unknown = table.filter(pl.col(SCENARIO).is_null())["_value"].unique().sort(nulls_last=True)
    if unknown.len():
        raise InputError(
            f"{table[SCENARIO].null_count()} {rule.side}s have values in no scenario group: "
            f"{unknown.head(5).to_list()}",
            file=file,
            column=rule.column,
            fix="add those values to a group, or set the rule's default scenario",
        )
    return Scenarios(table.drop("_value"), tuple(rule.groups), key)


def from_prepared(prepared_dir: str | Path, rule: str | ScenarioRule) -> Scenarios:
    """The scenario of every user / item of a prepared dataset directory."""
    rule = resolve_rule(rule)
    path = Path(prepared_dir) / (S.USERS_FILE if rule.side == "user" else S.ITEMS_FILE)
    if not path.is_file():
        raise InputError(
            "not a prepared dataset directory (missing file)", file=path, fix="run `semid prepare` first"
        )
    return assign(pl.read_parquet(path), rule, file=path)


def with_scenario(interactions: pl.DataFrame, scenarios: Scenarios) -> pl.DataFrame:
    """`interactions` (a split) with the `scenario` column of each row's user / item."""
    return interactions.join(scenarios.table, on=scenarios.key, how="left", maintain_order="left")


def write(prepared_dir: str | Path, rule: str | ScenarioRule, out: str | Path) -> Scenarios:
    """Assign scenarios over a prepared dataset and write the per-entity table atomically (names + rule + data
    hash in the metadata)."""
    rule = resolve_rule(rule)
    scenarios = from_prepared(prepared_dir, rule)
    data_hash = read_meta(Path(prepared_dir) / S.ITEMS_FILE).get("data_hash")
    meta: dict[str, Any] = {
        "kind": "scenarios",
        "key": scenarios.key,
        "names": list(scenarios.names),
        "rule": asdict(rule),
        "data_hash": data_hash,
    }
    write_parquet(scenarios.table, out, meta)
    return scenarios


def read(path: str | Path, *, data_hash: str | None = None) -> Scenarios:
    """A `scenarios.parquet` back, validated (codes in range, unique keys, same prepared data when asked)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            "the scenario table does not exist", file=path, fix="run semid.scenarios.write first"
        )
    meta = read_meta(path)
    if meta.get("kind") != "scenarios":
        raise InputError("not a scenario table", file=path, fix="point to the scenarios.parquet of this run")
    if data_hash is not None and meta.get("data_hash") != data_hash:
        raise InputError(
            "the scenario table was built from another prepared dataset (data_hash differs)",
            file=path,
            fix="rebuild it from this run's prepared directory",
        )
    table = pl.read_parquet(path)
    names, key = tuple(meta["names"]), str(meta["key"])
    bad = table.filter(~pl.col(SCENARIO).is_between(0, len(names) - 1) | pl.col(SCENARIO).is_null())
    if bad.height or table[key].n_unique() != table.height:
        raise InputError(
            "scenario codes out of range or duplicate keys", file=path, column=SCENARIO, fix="rebuild it"
        )
    return Scenarios(table, names, key)
