"""The `knowledge:` switch of `semid build` on the tiny random Llama: the encoder sees the enriched texts, the facets
are written per item, a re-run is served from the SQLite cache without loading the model, the switch enters the
fingerprint only when on, and `semid assign` enriches new items the same way (or fails with one clear error)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

import pipelines.assign as A
import pipelines.build_semids as B
from semid import data
from semid import schema as S
from semid.align import AlignConfig, AlignResult
from semid.align import fingerprint_settings as align_settings
from semid.encoder import EncoderConfig, fingerprint_settings
from semid.errors import InputError
from semid.ids import read_table, write_table
from semid.io import read_meta, sha256_json
from semid.knowledge import LLMConfig
from semid.knowledge.enriched import KnowledgeConfig, read_facets
from semid.knowledge.facets import FACET_KEYS, FacetConfig, enrich
from semid.knowledge.hf import HFBackend
from semid.rqvae import RQVAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")

ROLES = ("facets/extract", "facets/analyse", "facets/consolidate")
RQ = {"levels": 2, "codebook_size": 4, "max_epochs": 1, "batch_size": 64}
FACETS = {"notes_tokens": 4, "facet_tokens": 160}
"""Short answers keep the tiny model fast; at 160 tokens about a sixth of its constrained answers finish (valid
facets) and the rest are cut off (invalid), so both kinds of rows occur."""


class Spy:
    """`align` stand-in: records the item texts it is given and returns seeded unit vectors in a second."""

    def __init__(self) -> None:
        self.item_texts: list[list[str]] = []

    def __call__(
        self, items_text, users_text, train, enc_cfg, cfg, *, work_dir, images=None, cache=None, **_
    ):
        self.item_texts.append(list(items_text))
        gen = torch.Generator().manual_seed(0)
        work_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"format": 1}, work_dir / "state.pt")
        item = torch.nn.functional.normalize(
            torch.randn(len(items_text), 8, generator=gen), dim=1
        )  # (N_i, 8)
        user = torch.nn.functional.normalize(
            torch.randn(len(users_text), 8, generator=gen), dim=1
        )  # (N_u, 8)
        return AlignResult(item, user, {"probe": 1.0}, work_dir / "state.pt")


def _knowledge(model: Path, cache: Path) -> dict:
    return {
        "enabled": True,
        "cache": str(cache),
        "llm": {"model": str(model), "batch_size": 32, "max_length": 96},
        "facets": FACETS,
    }


def _config(raw: dict) -> KnowledgeConfig:
    return KnowledgeConfig(
        enabled=raw["enabled"],
        cache=raw["cache"],
        llm=LLMConfig(**raw["llm"]),
        facets=FacetConfig(**raw["facets"]),
    )


def _no_model_load(monkeypatch) -> None:
    def refuse(self):
        raise AssertionError("the model must not be loaded: every answer is cached")

    monkeypatch.setattr(HFBackend, "_load", refuse)


@pytest.fixture(scope="module")
def enriched_build(prepared_dir, tiny_llama, tmp_path_factory):
    """(out, fingerprint, spy, knowledge dict): one enriched build of the tiny prepared dataset."""
    root = tmp_path_factory.mktemp("knowledge_build")
    spy = Spy()
    raw = _knowledge(tiny_llama[0], root / "llm" / "answers.sqlite")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(B, "align", spy)
        out, fp = B.build(
            data_dir=str(prepared_dir),
            out=str(root / "semids"),
            item_rqvae=RQVAEConfig(**RQ),
            user_rqvae=RQVAEConfig(**RQ),
            knowledge=_config(raw),
        )
    return out, fp, spy, raw


def test_the_encoder_sees_the_enriched_texts_and_the_facets_are_written(enriched_build, prepared_dir):
    out, fp, spy, raw = enriched_build
    items = data.load(prepared_dir).items
    plain = items[S.TEXT].to_list()
    facets = pl.read_parquet(out / "facets.parquet")
    assert facets.columns == [S.ITEM, *FACET_KEYS] and facets.height == items.height == 120
    assert facets[S.ITEM].to_list() == items[S.ITEM].to_list()
    assert all(facets.schema[k] == pl.List(pl.String) for k in FACET_KEYS)
    values = read_facets(facets)
    n_invalid = sum(v is None for v in values)
    assert 0 < n_invalid < 120  # both cut-off (null row) and finished answers occur

    (texts,) = spy.item_texts
    assert texts == enrich(plain, values)  # the encoder saw text + serialised facets, in item order
    n_enriched = sum(a != b for a, b in zip(texts, plain))
    assert n_enriched > 0 and all(t.startswith(p) for t, p in zip(texts, plain))

    record = json.loads((out / "build.json").read_text())["knowledge"]
    assert record["enabled"] and record["items"] == 120 and record["enriched"] == n_enriched
    assert record["fingerprint"] == HFBackend(LLMConfig(model=raw["llm"]["model"])).fingerprint
    assert record["config"]["llm"]["dtype"] in ("float32", "bfloat16")  # pinned for `semid assign`
    assert set(record["summaries"]) == set(ROLES)
    for summary in record["summaries"].values():
        assert summary["items"] == 120 and summary["misses"] > 0
        assert summary["hits"] + summary["misses"] == 120
    assert record["summaries"]["facets/consolidate"]["invalid"] == n_invalid
    _, table_meta = read_table(out / S.ITEM_SIDS_FILE, key=S.ITEM)
    assert table_meta["knowledge"] == record
    assert Path(raw["cache"]).is_file() and not list(out.glob("*.sqlite"))  # the cache outlives the output


def test_a_second_build_is_served_from_the_cache_through_the_yaml(
    enriched_build, prepared_dir, tmp_path, monkeypatch, capsys
):
    """`knowledge:` in a `semid build` YAML (jsonargparse); every answer cached: the model is never loaded."""
    out, fp, first, raw = enriched_build
    spy = Spy()
    monkeypatch.setattr(B, "align", spy)
    _no_model_load(monkeypatch)
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump({"item_rqvae": RQ, "user_rqvae": RQ, "knowledge": raw}))
    again, fp_again = B.build_from_config(config, data_dir=prepared_dir, out=tmp_path / "semids", cache=None)
    assert fp_again == fp and spy.item_texts == first.item_texts
    log = capsys.readouterr().out
    for role in ROLES:
        assert f"[semids] llm {role}: 120 items, 120 cached, 0 computed" in log
    record = json.loads((again / "build.json").read_text())["knowledge"]
    assert all(s["misses"] == 0 and s["hits"] == 120 for s in record["summaries"].values())
    assert pl.read_parquet(again / "facets.parquet").equals(pl.read_parquet(out / "facets.parquet"))


OLD_ENCODER_CONFIG = {
    "model": "default",
    "kind": "auto",
    "pooling": "mean",
    "max_length": 128,
    "batch_size": 64,
    "normalize": True,
}
"""`asdict(EncoderConfig())` before the knowledge switch and the multi-device fields existed."""
OLD_ALIGN_CONFIG = {
    k: v
    for k, v in asdict(AlignConfig()).items()
    if k not in {"user_category_weight", "category_column", "category_lr", "item_stats"}
}
"""`asdict(AlignConfig())` before the user category and item stats objectives existed."""


def test_the_switch_enters_the_fingerprint_only_when_on(enriched_build, prepared_dir, tmp_path, monkeypatch):
    _, fp_on, _, _ = enriched_build
    monkeypatch.setattr(B, "align", Spy())
    rq = RQVAEConfig(**RQ)
    _, fp_plain = B.build(data_dir=str(prepared_dir), out=str(tmp_path / "a"), item_rqvae=rq, user_rqvae=rq)
    _, fp_off = B.build(
        data_dir=str(prepared_dir),
        out=str(tmp_path / "b"),
        item_rqvae=rq,
        user_rqvae=rq,
        knowledge=KnowledgeConfig(enabled=False, llm=LLMConfig(model="elsewhere")),
    )
    # the fingerprint formula from before the switch existed: earlier plain builds stay up to date
    before = sha256_json(
        {
            "data": read_meta(prepared_dir / S.ITEMS_FILE)["data_hash"],
            "encoder": OLD_ENCODER_CONFIG,  # the placement fields (devices, ...) came later and are not hashed
            "align": OLD_ALIGN_CONFIG,
            "item_rqvae": asdict(rq),
            "user_rqvae": asdict(rq),
        }
    )
    assert fp_plain == fp_off == before != fp_on
    assert fingerprint_settings(EncoderConfig(devices=4, strategy="ddp_spawn")) == OLD_ENCODER_CONFIG
    on = align_settings(AlignConfig(user_category_weight=0.5, category_column="genre", item_stats=True))
    assert on.keys() - OLD_ALIGN_CONFIG.keys() == {
        "user_category_weight",
        "category_column",
        "category_lr",
        "item_stats",
    }
    assert json.loads((tmp_path / "a" / "build.json").read_text())["knowledge"] == {"enabled": False}
    assert not (tmp_path / "a" / "facets.parquet").exists()


class FakeAligned:
    """`load_aligned_encoder` stand-in for `assign`: records the texts it encodes."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.encoder = None

    def encode_items(self, texts: list[str], images=None) -> torch.Tensor:
        self.texts += texts
        gen = torch.Generator().manual_seed(len(self.texts))
        return torch.nn.functional.normalize(torch.randn(len(texts), 8, generator=gen), dim=1)  # (N, 8)


def test_assign_enriches_new_items_like_the_build(
    enriched_build, prepared_dir, tmp_path, monkeypatch, capsys
):
    """New items with catalogue texts get exactly the catalogue items' enriched texts, from the cache."""
    out, _, _, _ = enriched_build
    build = tmp_path / "semids"
    shutil.copytree(out, build)
    fake = FakeAligned()
    monkeypatch.setattr(A, "load_aligned_encoder", lambda cfg, path: fake)
    _no_model_load(monkeypatch)
    plain = data.load(prepared_dir).items[S.TEXT].to_list()
    facets = read_facets(pl.read_parquet(out / "facets.parquet"))
    known = [i for i, f in enumerate(facets) if f is not None][:2]  # items the LLM gave facets to
    new = tmp_path / "new.csv"
    pl.DataFrame({S.ITEM: [120, 121], S.TEXT: [plain[i] for i in known]}).write_csv(new)
    A.assign(semids=str(build), items=str(new))
    assert fake.texts == enrich([plain[i] for i in known], [facets[i] for i in known])
    assert fake.texts != [plain[i] for i in known]
    assert "[assign] llm facets/consolidate: 2 items, 2 cached, 0 computed" in capsys.readouterr().out
    assert read_table(build / S.ITEM_SIDS_FILE, key=S.ITEM)[0].height == 122


@pytest.mark.parametrize(
    ("model", "problem"), [("missing", "not available here"), ("copy", "not the one the build")]
)
def test_assign_without_the_builds_llm_is_one_error(
    enriched_build, tiny_llama, tmp_path, monkeypatch, model, problem
):
    """The build's model folder is gone, or another folder stands in its place: one InputError naming the model,
    before anything is encoded or written."""
    out, _, _, _ = enriched_build
    build = tmp_path / "semids"
    shutil.copytree(out, build)
    where = tmp_path / "model"
    if model == "copy":
        shutil.copytree(tiny_llama[0], where)  # same weights, another place: another fingerprint
    table, meta = read_table(build / S.ITEM_SIDS_FILE, key=S.ITEM)
    meta["knowledge"]["config"]["llm"]["model"] = str(where)
    write_table(table, build / S.ITEM_SIDS_FILE, meta)
    new = tmp_path / "new.csv"
    pl.DataFrame({S.ITEM: [120], S.TEXT: ["a blue boat"]}).write_csv(new)
    fake = FakeAligned()
    monkeypatch.setattr(A, "load_aligned_encoder", lambda cfg, path: fake)
    before = (build / S.ITEM_SIDS_FILE).read_bytes()
    with pytest.raises(InputError, match=problem) as err:
        A.assign(semids=str(build), items=str(new))
    assert str(where) in str(err.value) and fake.texts == []
    assert (build / S.ITEM_SIDS_FILE).read_bytes() == before
