"""Semantic-ID tables: unique dedup suffixes in key order, health against hand counts, parquet I/O, new entities."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from semid.errors import InputError
from semid.ids import (
    CodebookCollapseError,
    assign_new,
    check_health,
    dedup_suffix,
    format_health,
    health,
    make_table,
    read_table,
    sid_columns,
    table_meta,
    write_table,
)
from semid.io import write_parquet
from semid.schema import ITEM, SID_DEDUP, USER, sid_schema

# four items, three of them on the tuple (0, 1): in key order 1, 2, 5 -> suffixes 0, 1, 2
KEYS = np.array([5, 2, 9, 1])
CODES = np.array([[0, 1], [0, 1], [1, 0], [0, 1]])


def meta_for(table: pl.DataFrame, sizes: list[int], key: str = ITEM) -> dict:
    return table_meta(
        key=key, codebook_sizes=sizes, health=health(table, sizes), encoder="tiny", seed=0, data_hash="abc"
    )


def test_suffix_ordering_by_key() -> None:
    assert dedup_suffix(CODES, KEYS).tolist() == [2, 1, 0, 0]
    assert dedup_suffix(torch.from_numpy(CODES), KEYS).tolist() == [2, 1, 0, 0]
    perm = np.array([2, 0, 3, 1])  # row order does not matter, only the keys do
    assert dedup_suffix(CODES[perm], KEYS[perm]).tolist() == [0, 2, 0, 1]


def test_dedup_unique_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(400, 2))  # 9 tuples for 400 entities: many collisions
    keys = rng.permutation(10_000)[:400]
    suffix = dedup_suffix(codes, keys)
    full = {(*c, s) for c, s in zip(codes.tolist(), suffix.tolist())}
    assert len(full) == 400  # oracle: a python set of full IDs
    for i in rng.choice(400, size=40, replace=False):  # oracle: suffix = earlier keys on the same tuple
        same = (codes == codes[i]).all(axis=1)
        assert suffix[i] == int((keys[same] < keys[i]).sum())


def test_dedup_rejects_duplicate_keys() -> None:
    with pytest.raises(InputError, match="duplicate keys"):
        dedup_suffix(CODES, np.array([1, 1, 2, 3]))


def test_make_table_schema_and_order() -> None:
    table = make_table(KEYS, CODES, key=ITEM)
    assert table.schema == sid_schema(ITEM, 2)
    assert table[ITEM].to_list() == [1, 2, 5, 9]
    assert table[SID_DEDUP].to_list() == [0, 1, 2, 0]
    assert make_table(KEYS, CODES, key=USER).columns[0] == USER


def test_health_hand_computed() -> None:
    h = health(make_table(KEYS, CODES, key=ITEM), [4, 2])
    level0, level1 = h["levels"]
    h_bits = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))  # counts 3 and 1 of 4
    assert level0["used"] == 2 and level0["utilization"] == 0.5 and level0["parent_utilization"] is None
    assert level0["entropy_bits"] == pytest.approx(h_bits)
    assert level0["entropy_normalized"] == pytest.approx(h_bits / 2)  # log2(4)
    assert level1["utilization"] == 1.0 and level1["entropy_normalized"] == pytest.approx(h_bits)
    assert level1["parent_utilization"] == pytest.approx(
        0.5
    )  # prefix 0 uses {1}, prefix 1 uses {0}: 1/2 each
    assert h["collision_rate"] == 0.5  # items 2 and 5 share (0, 1) with item 1
    assert h["colliding_tuples"] == 1 and h["largest_bucket"] == 3
    assert h["per_level0_code"] == {"min": 1, "median": 2.0, "max": 3}
    assert h["unique_full_ids"] == 1.0 and h["entities"] == 4 and h["utilization"] == [0.5, 1.0]
    text = format_health(h)
    assert "50.00%" in text and "largest bucket 3" in text and "median 2" in text


def test_health_rejects_codes_beyond_sizes() -> None:
    with pytest.raises(InputError, match="outside"):
        health(make_table(KEYS, CODES, key=ITEM), [1, 2])


def test_check_health_collapse() -> None:
    collapsed = make_table(np.arange(6), np.array([[0, i] for i in range(6)]), key=ITEM)
    with pytest.raises(CodebookCollapseError, match="collapse") as info:
        check_health(health(collapsed, [8, 8]), 0.5)  # level 0 uses 1 of 8 codes
    assert "kmeans" in info.value.fix and "dead-code" in info.value.fix and "constant" in info.value.fix
    check_health(health(make_table(KEYS, CODES, key=ITEM), [2, 2]), 0.5)
    with pytest.raises(CodebookCollapseError, match="^column 'sid_0': users codebook collapse"):
        check_health(health(collapsed, [8, 8]), 0.5, what="users")


def test_write_read_round_trip(tmp_path) -> None:
    table = make_table(KEYS, CODES, key=ITEM)
    meta = meta_for(table, [2, 2])
    write_table(table, tmp_path / "item_sids.parquet", meta)
    back, back_meta = read_table(tmp_path / "item_sids.parquet")
    assert back.equals(table) and back.schema == table.schema
    assert back_meta == meta
    users = make_table(KEYS, CODES, key=USER)  # without meta["key"] the key column is found by name
    write_table(users, tmp_path / "user_sids.parquet", {k: v for k, v in meta.items() if k != "key"})
    assert read_table(tmp_path / "user_sids.parquet")[0].equals(users)


def test_read_table_missing_sid_column(tmp_path) -> None:
    table = make_table(KEYS, CODES, key=ITEM)
    path = tmp_path / "item_sids.parquet"
    write_parquet(table.drop("sid_1"), path, meta_for(table, [2, 2]))
    with pytest.raises(InputError, match="sid_1") as info:
        read_table(path)
    assert info.value.column == "sid_1" and info.value.file == str(path)


def test_write_table_needs_meta(tmp_path) -> None:
    with pytest.raises(InputError, match="metadata lacks"):
        write_table(make_table(KEYS, CODES, key=ITEM), tmp_path / "x.parquet", {"levels": 2})


def test_assign_new_leaves_old_rows_untouched() -> None:
    table = make_table(KEYS, CODES, key=ITEM)
    meta = meta_for(table, [2, 2])
    new_keys = np.array([7, 0, 3])
    new_codes = np.array([[0, 1], [1, 1], [0, 1]])
    out, out_meta = assign_new(table, meta, new_keys, new_codes)
    assert out.schema == table.schema and out[ITEM].to_list() == sorted([*KEYS, *new_keys])
    assert out.filter(pl.col(ITEM).is_in(KEYS.tolist())).equals(table)  # byte-identical old rows
    assert out.select(pl.exclude(ITEM)).n_unique() == out.height  # every full ID unique
    suffix = dict(zip(out[ITEM].to_list(), out[SID_DEDUP].to_list()))
    assert (suffix[3], suffix[7], suffix[0]) == (3, 4, 0)  # (0, 1) had suffixes 0..2; new ones follow by key
    assert out_meta["version"] == meta["version"] + 1 and out_meta["added"] == 3
    assert out_meta["health"]["entities"] == 7 and meta["health"]["entities"] == 4


def test_assign_new_existing_keys() -> None:
    table = make_table(KEYS, CODES, key=ITEM)
    meta = meta_for(table, [2, 2])
    with pytest.raises(InputError, match="already have IDs"):
        assign_new(table, meta, np.array([2, 8]), np.array([[1, 1], [1, 1]]))
    out, out_meta = assign_new(table, meta, np.array([2, 8]), np.array([[1, 1], [1, 1]]), on_existing="skip")
    assert out.filter(pl.col(ITEM) == 2).row(0) == (2, 0, 1, 1)  # the old ID wins
    assert out.filter(pl.col(ITEM) == 8).row(0) == (8, 1, 1, 0) and out_meta["added"] == 1
    with pytest.raises(InputError, match="outside"):
        assign_new(table, meta, np.array([8]), np.array([[2, 0]]))


def test_sid_columns() -> None:
    assert sid_columns(make_table(KEYS, CODES, key=ITEM)) == ["sid_0", "sid_1"]


def test_read_table_checks_key_and_data_hash(tmp_path) -> None:
    table = make_table(KEYS, CODES, key=ITEM)
    path = tmp_path / "item_sids.parquet"
    write_table(table, path, meta_for(table, [2, 2]))
    assert read_table(path, key=ITEM, data_hash="abc")[0].equals(table)
    with pytest.raises(InputError, match="expected one of 'user_id'") as info:
        read_table(path, key=USER)
    assert info.value.file == str(path)
    with pytest.raises(InputError, match="data_hash") as info:
        read_table(path, data_hash="other")
    assert info.value.file == str(path) and "semid build" in info.value.fix


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t.with_columns(pl.lit(None, pl.Int32).alias("sid_1")), "null"),
        (lambda t: t.with_columns(pl.lit(5, pl.Int32).alias("sid_1")), "outside 0..1"),
        (lambda t: t.with_columns(pl.lit(1, pl.Int32).alias(ITEM)), "duplicate ids"),
        (lambda t: t.with_columns(pl.lit(0, pl.Int32).alias(SID_DEDUP)), "not unique"),
        (lambda t: t.with_columns(pl.lit(0, pl.Int32).alias("sid_2")), "beyond"),
        (lambda t: t.with_columns(pl.col("sid_0").cast(pl.Float64)), "dtype"),
    ],
)
def test_read_table_rejects_edited_tables(tmp_path, edit, match) -> None:
    table = make_table(KEYS, CODES, key=ITEM)
    path = tmp_path / "item_sids.parquet"
    write_parquet(edit(table), path, meta_for(table, [2, 2]))
    with pytest.raises(InputError, match=match) as info:
        read_table(path)
    assert info.value.file == str(path)


def test_read_table_accepts_other_integer_dtypes(tmp_path) -> None:
    table = make_table(KEYS, CODES, key=ITEM)
    path = tmp_path / "item_sids.parquet"
    write_parquet(table.cast(pl.Int64), path, meta_for(table, [2, 2]))
    back, _ = read_table(path)
    assert back.equals(table) and back.schema == table.schema


def test_read_table_directory_and_garbage(tmp_path) -> None:
    with pytest.raises(InputError, match="directory"):
        read_table(tmp_path)
    garbage = tmp_path / "item_sids.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a readable parquet"):
        read_table(garbage)


def test_assign_new_refuses_codes_of_another_build() -> None:
    table = make_table(KEYS, CODES, key=ITEM)
    meta = {**meta_for(table, [2, 2]), "stage_hash": "build-a"}
    same = {"stage_hash": "build-a", "data_hash": "abc", "encoder": "tiny", "codebook_sizes": (2, 2)}
    out, _ = assign_new(table, meta, np.array([7]), np.array([[0, 0]]), source=same)
    assert out.height == 5
    for name, value in [("stage_hash", "build-b"), ("data_hash", "xyz"), ("codebook_sizes", [2, 3])]:
        with pytest.raises(InputError, match=f"different builds \\({name} differ"):
            assign_new(table, meta, np.array([7]), np.array([[0, 0]]), source={**same, name: value})
