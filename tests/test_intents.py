"""Offline intent paths: the semantic-ID fallback names prefixes by distinctive title words, the LLM path is
validated, cleaned, numbered as a tree and cached (a re-run calls the model zero times), and read_intents refuses
broken tables."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import polars as pl
import pytest

from semid import schema as S
from semid.errors import InputError
from semid.intents import (
    INTENTS,
    IntentConfig,
    build,
    build_intents,
    chains,
    describe,
    prefix_names,
    read_intents,
)
from semid.io import write_parquet
from semid.knowledge import LLM, GenerationParams, LLMCache, LLMConfig

TITLES = [
    "Organic Espresso Coffee Beans",  # sid (0, 0)
    "Organic Coffee Beans Dark Roast",  # (0, 0)
    "Organic Coffee Grinder Burr",  # (0, 1)
    "Organic Coffee Grinder Manual",  # (0, 1)
    "Organic Green Tea Loose Leaf",  # (1, 0)
    "Organic Green Tea Matcha",  # (1, 0)
    "Organic Tea Kettle Steel",  # (1, 1)
    "Organic Tea Kettle Whistling",  # (1, 1)
]
CODES = [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)]


def _items() -> pl.DataFrame:
    return pl.DataFrame(
        {S.ITEM: list(range(8)), S.TEXT: TITLES}, schema={S.ITEM: pl.Int32, S.TEXT: pl.String}
    )


def _sids() -> pl.DataFrame:
    codes = np.array(CODES)
    return pl.DataFrame(
        {S.ITEM: list(range(8)), "sid_0": codes[:, 0], "sid_1": codes[:, 1], S.SID_DEDUP: [0, 1] * 4},
        schema={S.ITEM: pl.Int32, "sid_0": pl.Int32, "sid_1": pl.Int32, S.SID_DEDUP: pl.Int32},
    )


def test_fallback_names_prefixes_by_distinctive_words_and_skips_ancestor_words():
    names = prefix_names(_items(), _sids(), depth=2, name_words=1)
    got = dict(zip(names["key"].to_list(), names["node_name"].to_list()))
    # "organic" is in every title (idf 0) so it never names anything; children skip their parent's word.
    assert got == {
        "sid:0": "coffee",
        "sid:1": "tea",
        "sid:0/0": "beans",
        "sid:0/1": "grinder",
        "sid:1/0": "green",
        "sid:1/1": "kettle",
    }


def test_fallback_table_is_a_tree_of_prefix_chains(tmp_path):
    result = build_intents(_items(), sids=_sids(), cfg=IntentConfig(depth=3, name_words=1))
    assert result.table.schema == INTENTS
    assert result.meta["items"] == {"llm": 0, "fallback": 8, "none": 0}
    write_parquet(result.table, tmp_path / "intents.parquet", result.meta)
    intents = read_intents(tmp_path / "intents.parquet", n_items=8)
    assert intents.item_nodes.shape == (8, 1, 2)  # depth capped at the 2 semantic-ID levels
    assert intents.n_nodes == 6
    assert describe(intents, 2) == ["coffee > grinder"]
    assert describe(intents, 7) == ["tea > kettle"]
    chain = chains(intents)
    leaf = intents.item_nodes[2, 0, 1]
    assert chain[leaf].tolist() == [intents.item_nodes[2, 0, 0], leaf]
    assert intents.parent[leaf] == intents.item_nodes[2, 0, 0]


class IntentBackend:
    """Answers by the item named in the prompt; one item gets an answer that does not parse."""

    fingerprint = "intents-v1"

    def __init__(self) -> None:
        self.calls = 0

    def generate(
        self, prompts: list[str], schema: dict[str, Any] | None, params: GenerationParams
    ) -> list[str]:
        self.calls += len(prompts)
        out = []
        for p in prompts:
            assert "bought this item" in p and schema is not None
            if "Espresso" in p:
                paths = [["Coffee ", "Espresso."], ["coffee", "espresso"], ["gifts", "coffee lover"]]
                out.append(json.dumps({"intents": paths}))  # a duplicate after cleaning, dropped
            elif "Grinder" in p:
                out.append(json.dumps({"intents": [["Coffee", "Grinding", "Burr grinders"]]}))
            elif "Kettle" in p:
                out.append('{"intents": [["tea", "ket')  # cut off: invalid -> fallback
            else:
                out.append(json.dumps({"intents": [["tea"]]}))
        return out

    def hidden(self, prompts: list[str], pooling: str) -> np.ndarray:
        raise AssertionError("intents never need hidden states")


def test_llm_paths_are_cleaned_numbered_as_a_tree_and_cached(tmp_path):
    items = _items()
    backend = IntentBackend()
    llm = LLM(LLMConfig(batch_size=3), LLMCache(tmp_path / "c.sqlite"), backend=backend, progress=False)
    first = build_intents(items, sids=_sids(), llm=llm, cfg=IntentConfig(name_words=1))
    assert backend.calls == 8
    assert first.summary.invalid == 2
    assert first.meta["items"] == {"llm": 6, "fallback": 2, "none": 0}
    write_parquet(first.table, tmp_path / "intents.parquet", first.meta)
    intents = read_intents(tmp_path / "intents.parquet", n_items=8)
    assert describe(intents, 0) == ["coffee > espresso", "gifts > coffee lover"]
    assert describe(intents, 2) == ["coffee > grinding > burr grinders"]
    assert describe(intents, 6) == ["tea > kettle"]  # fallback: the sid prefix names
    # "coffee" of items 0..3 is one node; the fallback's "tea" (a sid prefix) is another node than the LLM's "tea".
    assert len({intents.item_nodes[i, 0, 0] for i in (0, 2, 3)}) == 1
    assert intents.item_nodes[1, 0, 0] == intents.item_nodes[4, 0, 0]  # both answered ["tea"]
    assert intents.item_nodes[4, 0, 0] != intents.item_nodes[6, 0, 0]
    assert intents.item_nodes.shape == (8, 2, 3)

    again = LLM(LLMConfig(batch_size=3), LLMCache(tmp_path / "c.sqlite"), backend=backend, progress=False)
    second = build_intents(items, sids=_sids(), llm=again, cfg=IntentConfig(name_words=1))
    assert backend.calls == 8  # zero new calls
    assert second.summary.hits == 8
    assert second.table.equals(first.table)


def test_build_needs_an_llm_or_ids():
    with pytest.raises(InputError, match="LLM or a semantic-ID table"):
        build_intents(_items())


def test_read_intents_refuses_broken_tables(tmp_path):
    table = build_intents(_items(), sids=_sids()).table
    path = tmp_path / "intents.parquet"
    write_parquet(table, path, {"data_hash": "abc"})
    with pytest.raises(InputError, match="data_hash"):
        read_intents(path, data_hash="xyz")
    with pytest.raises(InputError, match="dataset has 4 items"):
        read_intents(path, n_items=4)
    # one node id under two parents: a hand edit that breaks the tree
    leaf = table.filter((pl.col(S.ITEM) == 0) & (pl.col("level") == 1))["node_id"][0]
    broken = table.with_columns(
        pl.when((pl.col(S.ITEM) == 7) & (pl.col("level") == 1))
        .then(leaf)
        .otherwise(pl.col("node_id"))
        .alias("node_id")
    )
    write_parquet(broken, path, {})
    with pytest.raises(InputError, match="two levels, names or parents"):
        read_intents(path)
    write_parquet(table.filter(pl.col("level") == 1), path, {})
    with pytest.raises(InputError, match="skips a level"):
        read_intents(path)


def test_build_reads_the_prepared_items_and_refuses_ids_of_another_dataset(prepared_dir, tmp_path):
    from semid.ids import make_table, table_meta, write_table
    from semid.io import read_meta

    items = pl.read_parquet(prepared_dir / S.ITEMS_FILE)
    codes = np.stack([items[S.ITEM].to_numpy() % 4, items[S.ITEM].to_numpy() % 3], 1)
    table = make_table(items[S.ITEM].to_numpy(), codes, key=S.ITEM)
    data_hash = read_meta(prepared_dir / S.ITEMS_FILE)["data_hash"]
    meta = dict(key=S.ITEM, codebook_sizes=[4, 3], health={}, encoder="test", seed=0)
    write_table(table, tmp_path / "ok.parquet", table_meta(**meta, data_hash=data_hash))
    result = build(prepared_dir, tmp_path / "intents.parquet", sids=tmp_path / "ok.parquet")
    intents = read_intents(tmp_path / "intents.parquet", n_items=items.height, data_hash=data_hash)
    assert result.meta["items"]["fallback"] == items.height
    assert (intents.item_nodes[:, 0, :] > 0).all() and intents.n_nodes == 4 + 12

    write_table(table, tmp_path / "other.parquet", table_meta(**meta, data_hash="another"))
    with pytest.raises(InputError, match="data_hash"):
        build(prepared_dir, tmp_path / "x.parquet", sids=tmp_path / "other.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_semid_intents_command_writes_the_table_and_errors_in_one_line(prepared_dir, tmp_path, capsys):
    from pipelines.cli import semid_main
    from semid.ids import make_table, table_meta, write_table
    from semid.io import read_meta

    items = pl.read_parquet(prepared_dir / S.ITEMS_FILE)
    codes = np.stack([items[S.ITEM].to_numpy() % 4, items[S.ITEM].to_numpy() % 3], 1)
    data_hash = read_meta(prepared_dir / S.ITEMS_FILE)["data_hash"]
    meta = table_meta(
        key=S.ITEM, codebook_sizes=[4, 3], health={}, encoder="test", seed=0, data_hash=data_hash
    )
    write_table(make_table(items[S.ITEM].to_numpy(), codes, key=S.ITEM), tmp_path / "sids.parquet", meta)
    out = tmp_path / "intents.parquet"
    semid_main(
        [
            "intents",
            "--data_dir",
            str(prepared_dir),
            "--out",
            str(out),
            "--sids",
            str(tmp_path / "sids.parquet"),
        ]
    )
    assert "from SID prefixes" in capsys.readouterr().out
    assert read_intents(out, n_items=items.height, data_hash=data_hash).n_nodes == 4 + 12

    with pytest.raises(SystemExit) as exit_info:  # no LLM and no IDs: one line, exit 2, nothing written
        semid_main(["intents", "--data_dir", str(prepared_dir), "--out", str(tmp_path / "none.parquet")])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err and not (tmp_path / "none.parquet").exists()
