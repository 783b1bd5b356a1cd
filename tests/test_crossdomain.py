"""RGCD-Rep cross-domain representations: pairs (hand oracle), the teacher (fake LLM backend: cached, parsed,
fallback), the chorus-token student (output and gradients, routing direction, the no-routing ablation), recall@k
against brute force, and the build end to end on a tiny Food -> Kitchen release (ID table readable by read_table)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from semid import amazon, data
from semid import schema as S
from semid.crossdomain import pairs as P
from semid.crossdomain import student as ST
from semid.crossdomain import teacher as T
from semid.crossdomain.build import PAIRS_FILE, REPORT_FILE, recall_at_k
from semid.encoder import ContentEncoder, EncoderConfig
from semid.errors import InputError
from semid.ids import read_table
from semid.knowledge import LLM, GenerationParams, LLMCache, LLMConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# -- pairs --------------------------------------------------------------------------------------------------


def _events(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema={S.USER: pl.Int32, S.ITEM: pl.Int32, S.TIMESTAMP: pl.Int64}, orient="row"
    )


def test_pairs_window_decay_and_score_on_a_hand_example() -> None:
    source = _events([(1, 0, 0), (1, 1, 5), (2, 0, 3), (2, 0, 10), (3, 1, 0)])
    target = _events([(1, 10, 1), (1, 11, 20), (2, 10, 0), (2, 12, 9), (3, 10, 2)])
    got = P.co_engaged_pairs(source, target, P.PairConfig(window=3, decay=0.5))
    # (0,10): u1 gap 1 (w 1), u2 closest gap 3 (w .25); (0,12): u2 gap 1; (1,10): u3 gap 2 (w .5); u1's (1,10) gap 4
    # is outside the window. n_s: item0 2 users, item1 2; n_t: item10 3, item12 1.
    expect = {
        (0, 12): (1, 1, 1.0, 1.0 / math.sqrt(2 * 1)),
        (0, 10): (2, 1, 1.25, 1.25 / math.sqrt(2 * 3)),
        (1, 10): (1, 2, 0.5, 0.5 / math.sqrt(2 * 3)),
    }
    assert got.schema == P.PAIRS
    assert [(r[0], r[1]) for r in got.iter_rows()] == list(expect)  # best score first
    for s, t, users, gap, weight, score in got.iter_rows():
        assert (users, gap) == expect[(s, t)][:2]
        assert weight == pytest.approx(expect[(s, t)][2])
        assert score == pytest.approx(expect[(s, t)][3])
    strict = P.co_engaged_pairs(source, target, P.PairConfig(window=3, decay=0.5, min_users=2))
    assert strict.select(P.SOURCE_ITEM, P.TARGET_ITEM).rows() == [(0, 10)]
    assert P.co_engaged_pairs(source, target, P.PairConfig(window=3, max_pairs=1)).height == 1
    with pytest.raises(InputError, match="window"):
        P.co_engaged_pairs(source, target, P.PairConfig(window=0))


# -- teacher ------------------------------------------------------------------------------------------------

ITEMS = pl.DataFrame(
    {
        S.ITEM: [0, 1, 2, 3],
        S.TEXT: [
            "Dark Roast Coffee Beans, 12 oz",
            "Green Tea Bags 100 count",
            "Burr Coffee Grinder",
            "Cast Iron Tea Kettle",
        ],
        T.DOMAIN_COL: ["food", "food", "kitchen", "kitchen"],
    }
)
PAIRS = pl.DataFrame({P.SOURCE_ITEM: [0, 1, 0], P.TARGET_ITEM: [2, 3, 3]}, schema_overrides={})


class FakeTeacherLLM:
    """Valid facets for every item but the tea bags (invalid JSON), a judgement for every pair but (0, 3)."""

    fingerprint = "fake-teacher-v1"

    def __init__(self) -> None:
        self.calls = 0

    def generate(
        self, prompts: list[str], schema: dict[str, Any] | None, params: GenerationParams
    ) -> list[str]:
        self.calls += len(prompts)
        out = []
        for p in prompts:
            if schema == T.ITEM_SCHEMA:
                subject = "coffee" if "Coffee" in p else "tea"
                bad = "Tea Bags" in p
                out.append(
                    "oops" if bad else json.dumps({T.VERTICAL: "x", T.SUBJECT: subject, T.TOPIC: "drink"})
                )
            else:
                bad = "Roast" in p and "Kettle" in p
                out.append(
                    "{"
                    if bad
                    else json.dumps({"same_subject": True, "same_topic": False, "transfer": "high"})
                )
        return out

    def hidden(self, prompts: list[str], pooling: str) -> np.ndarray:
        raise AssertionError("not used")


def test_fallback_facets_and_overlap() -> None:
    facets = T.fallback_facets(ITEMS)
    assert facets[T.SUBJECT].to_list() == ["beans", "tea", "grinder", "kettle"]  # "bags" is packaging
    assert facets[T.TOPIC].to_list() == ["coffee", "", "coffee", "tea"]  # only words shared with another item
    assert facets[T.VERTICAL].to_list() == ["food", "food", "kitchen", "kitchen"]
    score = T.fallback_transferability(PAIRS, facets).to_list()
    assert score == [0.5, 1.0, 0.0]  # {bean, coffee} & {grinder, coffee}: 1 of 2; {tea} in {kettle, tea}
    assert T.serialise(facets)[2] == "Domain: kitchen. Subject: grinder. Topic: coffee."


def test_teacher_with_an_llm_is_parsed_cached_and_falls_back(tmp_path: Path) -> None:
    backend = FakeTeacherLLM()
    cfg = T.TeacherConfig(mode="llm")
    llm = LLM(LLMConfig(batch_size=2), LLMCache(tmp_path / "c.sqlite"), backend=backend, progress=False)
    first = T.teach(ITEMS, PAIRS, cfg, llm=llm)
    assert first.facets[T.FACET_SOURCE].to_list() == ["llm", "fallback", "llm", "llm"]
    assert first.facets[T.SUBJECT].to_list() == ["coffee", "tea", "coffee", "tea"]
    assert first.pairs[T.TRANSFER_SOURCE].to_list() == ["llm", "llm", "fallback"]
    # judgement: 0.5 * high + 0.25 * same_subject = 0.75; the invalid one: facet overlap {coffee, drink} vs {tea, drink}
    assert first.pairs[T.TRANSFER].to_list() == pytest.approx([0.75, 0.75, 0.5])
    assert first.summary["facets_from_llm"] == 3 and first.summary["pairs_from_llm"] == 2
    calls = backend.calls
    again = LLM(LLMConfig(), LLMCache(tmp_path / "c.sqlite", "read-only"), backend=backend, progress=False)
    second = T.teach(ITEMS, PAIRS, cfg, llm=again)
    assert backend.calls == calls  # every answer (the invalid ones too) came from the cache
    assert second.pairs.equals(first.pairs) and second.facets.equals(first.facets)


# -- student ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ContentEncoder:
    """tiny_bert_dir's shape and tokenizer with weights drawn at std 0.5: at BERT's 0.02 a random model's token
    states are near-identical for every text (chorus states of 6 texts had cosines > 0.998), so nothing could be
    learnt from them; pretrained MiniLM gives 0.4-0.65."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("bert_std05")
    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.initializer_range = 0.5
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(path)
    return ContentEncoder(EncoderConfig(model=str(path)))


def _student(encoder: ContentEncoder, **kw: Any) -> ST.ChorusStudent:
    torch.manual_seed(0)
    cfg = ST.StudentConfig(dim=8, chorus_tokens=3, max_length=16, **kw)
    return ST.ChorusStudent(encoder, teacher_dim=encoder.hidden_size, cfg=cfg)


TEXTS = [
    "space robot war",
    "love music family",
    "ocean boat blue",
    "city crime spy",
    "magic king school",
    "red car road",
]


def test_chorus_tokens_change_the_output_and_get_gradients(encoder: ContentEncoder) -> None:
    student = _student(encoder)
    out = student(TEXTS[:2])
    assert out.chorus.shape == (2, 3, encoder.hidden_size) and out.z_t.shape == (2, 8)
    torch.testing.assert_close(out.z_t.norm(dim=-1), torch.ones(2))
    (out.z_t.sum() + out.distill.sum()).backward()
    assert student.chorus.grad is not None and student.chorus.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())  # the encoder stays frozen
    with torch.no_grad():
        student.chorus.add_(torch.randn_like(student.chorus))
        moved = student(TEXTS[:2])
    assert not torch.allclose(moved.z_t, out.z_t.detach(), atol=1e-4)
    # the chorus tokens read the text: other texts, other states
    assert not torch.allclose(moved.chorus[0], moved.chorus[1], atol=1e-4)
    later = _student(encoder, inject_layer=1)(TEXTS[:2])  # injected after the first layer: still works
    assert later.chorus.shape == (2, 3, encoder.hidden_size)


def _gap(student: ST.ChorusStudent, pairs: torch.Tensor) -> torch.Tensor:
    """cos_t - cos_r per pair."""
    z = ST.embed(student, TEXTS)
    s, t = pairs[:, 0], pairs[:, 1]
    return (z.z_t[s] * z.z_t[t]).sum(-1) - (z.z_r[s] * z.z_r[t]).sum(-1)


def test_routing_sends_high_transfer_pairs_to_z_t_and_the_ablation_does_not(encoder: ContentEncoder) -> None:
    pairs = torch.tensor([[0, 1], [2, 3], [4, 5], [1, 2], [3, 4], [5, 0]])
    w = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    targets = torch.nn.functional.normalize(torch.randn(len(TEXTS), encoder.hidden_size), dim=-1)
    gaps = {}
    for routing in (True, False):
        student = _student(
            encoder, use_routing=routing, stage1_epochs=0, stage2_epochs=25, batch_size=6, lr=1e-2, seed=3
        )
        history = ST.train_student(student, TEXTS, targets, pairs, w)
        assert len(history.stage2) == 25
        if not routing:
            assert all(epoch["routing"] == 0.0 for epoch in history.stage2)
        gap = _gap(student, pairs)
        gaps[routing] = (gap[:3].mean() - gap[3:].mean()).item()
    # high-transfer pairs are similar in z_t, low ones in z_r (seen: 0.28); without routing no such split (-0.01)
    assert gaps[True] > 0.15
    assert gaps[True] > gaps[False] + 0.15


def test_pair_losses_ablation_and_values() -> None:
    torch.manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape), dim=-1)  # noqa: E731
    src = ST.StudentOutput(unit(4, 2, 6), unit(4, 5), unit(4, 3), unit(4, 3))
    tgt = ST.StudentOutput(unit(4, 2, 6), unit(4, 5), unit(4, 3), unit(4, 3))
    w = torch.tensor([1.0, 0.0, 1.0, 0.0])
    on = ST.pair_losses(src, tgt, w, ST.StudentConfig(distill_weight=0.0))
    off = ST.pair_losses(src, tgt, w, ST.StudentConfig(use_routing=False, distill_weight=0.0))
    assert off.routing.item() == 0.0 and off.total.item() == pytest.approx(off.contrastive.item())
    assert on.total.item() == pytest.approx(on.contrastive.item() + on.routing.item())
    # routing oracle: BCE of sigmoid((cos_t - cos_r)/tau) against w, by hand
    gap = ((src.z_t * tgt.z_t).sum(-1) - (src.z_r * tgt.z_r).sum(-1)) / 0.1
    log_sig = torch.nn.functional.logsigmoid
    oracle = -(w * log_sig(gap) + (1 - w) * log_sig(-gap)).mean()
    assert on.routing.item() == pytest.approx(oracle.item(), rel=1e-5)


def test_recall_at_k_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(30, 4, generator=g)
    queries = torch.arange(0, 10)
    truth = torch.randint(10, 30, (10,), generator=g)
    candidates = torch.arange(10, 30)
    for k in (1, 3, 10):
        hits = 0
        for q, t in zip(queries.tolist(), truth.tolist()):
            scores = {c: float(vectors[q] @ vectors[c]) for c in candidates.tolist()}
            ranked = sorted(scores, key=lambda c: -scores[c])
            hits += t in ranked[:k]
        assert recall_at_k(vectors, queries, truth, candidates, k) == pytest.approx(hits / 10)


# -- the build end to end -----------------------------------------------------------------------------------

THEMES = {
    "coffee": (
        ["coffee beans dark roast", "espresso coffee blend", "coffee pods"],
        ["coffee grinder", "coffee press", "coffee mug"],
    ),
    "tea": (
        ["green tea bags", "black tea leaves", "tea biscuits"],
        ["tea kettle", "tea infuser", "tea cups"],
    ),
    "baking": (
        ["baking flour", "cake sprinkles", "baking chocolate chips"],
        ["baking pan", "cake stand", "mixing bowl"],
    ),
    "pasta": (
        ["pasta sauce", "spaghetti pasta", "pasta parmesan"],
        ["pasta pot", "cheese grater", "pasta colander"],
    ),
}


def _write_release(root: Path) -> Path:
    """A Food -> Kitchen release in the LLMCDSR layout where each overlap user keeps to one theme."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    food = [t for f, _ in THEMES.values() for t in f]
    kitchen = [t for _, k in THEMES.values() for t in k] + [f"spare kitchen tool {i}" for i in range(20)]
    titles = food + kitchen
    pl.DataFrame(
        {
            "item_id": range(len(titles)),
            "domain": ["food"] * len(food) + ["kitchen"] * len(kitchen),
            "asin": [f"B{i:04d}" for i in range(len(titles))],
            "title": titles,
        }
    ).write_csv(root / "items.tsv", separator="\t")
    n_food = len(food)
    lines = []
    for u in range(1, 41):
        theme = u % len(THEMES)
        f = [theme * 3 + int(i) for i in rng.permutation(3)]
        k = [n_food + theme * 3 + int(i) for i in rng.permutation(3)]
        seq = [x for pair in zip(f, k) for x in pair]
        seq.insert(2, n_food + 12 + int(rng.integers(20)))  # an off-theme kitchen item among the train events
        lines.append(f"{u}\t{','.join(map(str, seq))}")
    (root / "train_overlap.txt").write_text("\n".join(lines) + "\n")
    (root / "train_A.txt").write_text("1\t0,1,2\n")
    (root / "train_B.txt").write_text("".join(f"{u}\t{n_food + u},{n_food + 12 + u}\n" for u in range(1, 8)))
    held = "".join(f"{u}\t0,{n_food},{n_food + 1},{n_food + 2}\n" for u in range(1, 4))
    (root / "valid.txt").write_text(held)
    (root / "test.txt").write_text(held)
    return root


@pytest.fixture(scope="module")
def cross_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rgcd")
    release = _write_release(root / "release")
    cfg = data.PrepareConfig(negatives=data.NegativeConfig(per_positive=2, ranking=5))
    return data.write(amazon.build(amazon.source_files(release), cfg), root / "prepared")


def test_rgcd_command_writes_a_readable_unique_id_table(
    cross_prepared: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from pipelines.rgcd import main

    out = tmp_path / "rgcd"
    options = [
        "--encoder.model", str(tiny_bert_dir),
        "--student.dim", "8", "--student.stage1_epochs", "1", "--student.stage2_epochs", "2",
        "--rqvae.levels", "2", "--rqvae.codebook_size", "4", "--rqvae.max_epochs", "2",
        "--rqvae.min_level0_utilization", "0.25", "--progress", "false",
    ]  # fmt: skip
    args = [str(cross_prepared), str(out), *options]
    main(args)
    data_hash = data.load(cross_prepared).meta["data_hash"]
    table, meta = read_table(out / S.ITEM_SIDS_FILE, key=S.ITEM, data_hash=data_hash)
    n_items = pl.read_parquet(cross_prepared / S.ITEMS_FILE).height
    assert table.height == n_items and table[S.ITEM].to_list() == list(range(n_items))
    assert table.drop(S.ITEM).n_unique() == n_items
    assert meta["codebook_sizes"] == [4, 4] and "z_t" in meta["encoder"]
    report = json.loads((out / REPORT_FILE).read_text())
    assert set(report["recall@10"]) == {"z_t", "z_r", "z_t+z_r", "raw"}
    assert all(0.0 <= v <= 1.0 for v in report["recall@10"].values())
    assert report["pairs"]["held_out"] > 0 and report["teacher"]["mode"] == "fallback"
    pairs = pl.read_parquet(out / PAIRS_FILE)
    assert pairs[T.TRANSFER].is_between(0.0, 1.0).all()
    # on-theme pairs (coffee beans -> coffee grinder) are the transferable ones
    raw = pl.read_parquet(cross_prepared / S.ITEMS_FILE).select(S.ITEM, pl.col(S.RAW_ITEM).cast(pl.Int64))
    pairs = pairs.join(raw.rename({S.ITEM: P.SOURCE_ITEM, S.RAW_ITEM: "s"}), on=P.SOURCE_ITEM).join(
        raw.rename({S.ITEM: P.TARGET_ITEM, S.RAW_ITEM: "t"}), on=P.TARGET_ITEM
    )
    themed = pairs.filter((pl.col("t") - 12) // 3 == pl.col("s") // 3)
    spare = pairs.filter(pl.col("t") >= 24)
    assert themed.height and spare.height
    assert themed[T.TRANSFER].mean() > 0.4 and spare[T.TRANSFER].max() == 0.0
    z = pl.read_parquet(out / S.ITEM_EMB_FILE)
    assert z.height == n_items and z.schema[S.EMBEDDING] == pl.Array(pl.Float32, 8)
    main(args)  # its own earlier output is replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit):
        main([str(cross_prepared), str(tmp_path / "mine"), *options])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_rgcd_refuses_a_dataset_without_source_history(prepared_dir: Path, tmp_path: Path) -> None:
    from semid.crossdomain import rgcd_build

    with pytest.raises(InputError, match="domain"):
        rgcd_build(prepared_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_rgcd_build_with_an_llm_teacher_and_without_routing(
    cross_prepared: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from semid.crossdomain import RGCDConfig, StudentConfig, TeacherConfig, rgcd_build
    from semid.rqvae import RQVAEConfig

    backend = FakeTeacherLLM()
    llm = LLM(LLMConfig(batch_size=8), LLMCache(tmp_path / "c.sqlite"), backend=backend, progress=False)
    cfg = RGCDConfig(
        teacher=TeacherConfig(mode="llm"),
        student=StudentConfig(dim=8, stage1_epochs=1, stage2_epochs=1, use_routing=False),
        rqvae=RQVAEConfig(levels=2, codebook_size=4, max_epochs=1, min_level0_utilization=0.25),
        encoder=EncoderConfig(model=str(tiny_bert_dir)),
        items="paired",
    )
    result = rgcd_build(cross_prepared, tmp_path / "out", cfg, llm=llm, progress=False)
    report = result.report
    assert report["teacher"]["pairs_from_llm"] == report["pairs"]["total"] > 0
    assert all(epoch["routing"] == 0.0 for epoch in report["history"]["stage2"])
    table, _ = read_table(tmp_path / "out" / S.ITEM_SIDS_FILE, key=S.ITEM)
    assert table.height == report["pairs"]["items"]  # items="paired": only the items of the pairs
    facets = pl.read_parquet(tmp_path / "out" / "facets.parquet")
    assert set(facets[T.SUBJECT]) <= {"coffee", "tea"}  # the fake LLM's answers
