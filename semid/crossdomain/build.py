"""`rgcd_build`: RGCD-Rep cross-domain semantic IDs (arXiv 2606.04448) from a cross-domain prepared dataset.

pairs (co-engaged source/target items) -> teacher (facets, transferability) -> student (chorus tokens, z_t / z_r)
-> z_t of every item -> RQ-VAE -> one ID table shared by both domains (semid.ids.make_table / write_table), so a
CTR model's cluster embeddings carry source-domain knowledge to target-domain tail items. The build also measures
pair retrieval on held-out pairs: recall@k of the paired target item among all target-domain items, ranking by z_t
against ranking by the raw encoder embedding.

Output folder (owned: new, empty or an earlier output of the same command): item_sids.parquet, item_rqvae.pt,
item_embeddings.parquet (z_t), pairs.parquet (with the teacher's transferability and the held-out flag),
facets.parquet, rgcd_student.pt (the trained chorus tokens and heads) and rgcd.json (facts and metrics).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import polars as pl
import torch
from torch import Tensor

from semid import data
from semid import schema as S
from semid.checkpoint import save_checkpoint
from semid.crossdomain.pairs import (
    SOURCE_ITEM,
    TARGET_ITEM,
    PairConfig,
    co_engaged_pairs,
    read_events,
)
from semid.crossdomain.student import ChorusStudent, StudentConfig, embed, train_student
from semid.crossdomain.teacher import DOMAIN_COL, TRANSFER, TeacherConfig, serialise, teach
from semid.encoder import ContentEncoder, EncoderConfig, embed_all
from semid.errors import InputError
from semid.ids import check_health, health, make_table, table_meta, write_table
from semid.io import check_output_dir, owned_output_dir, write_json, write_parquet
from semid.knowledge import LLM, LLMCache
from semid.rqvae import RQVAEConfig, save_rqvae, train_rqvae

COMMAND = "semid rgcd"
FORMAT = 1
PAIRS_FILE = "pairs.parquet"
FACETS_FILE = "facets.parquet"
STUDENT_FILE = "rgcd_student.pt"
REPORT_FILE = "rgcd.json"
HELD_OUT = "held_out"


@dataclass(frozen=True)
class EvalConfig:
    held_out: float = 0.2
    """Fraction of pairs kept out of training and used for the pair-retrieval recall."""
    k: int = 10
    seed: int = 0


class RGCDResult(NamedTuple):
    out: Path
    recall: dict[str, float]
    """recall@k of held-out pairs by z_t, z_r, [z_t; z_r] and the raw encoder embedding."""
    report: dict[str, Any]


@dataclass(frozen=True)
class RGCDConfig:
    """Everything `rgcd_build` decides (the command's options)."""

    pairs: PairConfig = field(default_factory=PairConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    rqvae: RQVAEConfig = field(default_factory=RQVAEConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    items: Literal["all", "paired"] = "all"
    """all: every item of the prepared dataset gets an ID (what a CTR model needs); paired: only the items of the
    pairs (a quick look at the representation)."""


def item_domains(prepared: data.Prepared, file: Path) -> pl.DataFrame:
    """(item_id, text, domain) with the domain a plain string; InputError when the items lack a domain feature."""
    if DOMAIN_COL not in prepared.items.columns:
        raise InputError(
            "the items have no domain feature, so source and target items cannot be told apart",
            file=file,
            column=DOMAIN_COL,
            fix="prepare a cross-domain dataset (semid prepare --dataset amazon-food-kitchen)",
        )
    domain = prepared.items[DOMAIN_COL]
    first = domain.list.first() if domain.dtype == S.FEATURE_DTYPE else domain.cast(pl.String)
    return prepared.items.select(S.ITEM, S.TEXT).with_columns(first.fill_null("").alias(DOMAIN_COL))


def held_out_mask(n: int, cfg: EvalConfig) -> np.ndarray:
    """(n,) bool: which pairs are held out, drawn from cfg.seed (pairs come sorted, so this is reproducible)."""
    if not 0.0 <= cfg.held_out < 1.0:
        raise InputError(f"eval.held_out={cfg.held_out}", fix="use 0 <= eval.held_out < 1")
    return np.random.default_rng([cfg.seed, 17]).random(n) < cfg.held_out


def recall_at_k(vectors: Tensor, queries: Tensor, truth: Tensor, candidates: Tensor, k: int) -> float:
    """Fraction of (query row, true row) pairs whose true row ranks in the top k of `candidates` by dot product.

    vectors (N, D); queries, truth (P,) row indices; candidates (C,) row indices holding every truth row. Ties
    count against the truth (strictly greater or equal scores rank above it)."""
    if queries.numel() == 0:
        return float("nan")
    cand = vectors[candidates]  # (C, D)
    hits = 0
    for start in range(0, queries.numel(), 256):
        q = vectors[queries[start : start + 256]]  # (b, D)
        t = vectors[truth[start : start + 256]]  # (b, D)
        scores = q @ cand.T  # (b, C)
        true = (q * t).sum(-1, keepdim=True)  # (b, 1)
        above = (scores > true).sum(-1) + ((scores == true).sum(-1) - 1).clamp_min(0)  # (b,)
        hits += int((above < k).sum())
    return hits / queries.numel()


def _rows(ids: pl.Series, table: pl.DataFrame) -> Tensor:
    """(len(ids),) long: the row of each id in `table` (every id must be there)."""
    index = table.select(pl.col(S.ITEM).cast(pl.Int64)).with_row_index("_row")
    found = pl.DataFrame({S.ITEM: ids.cast(pl.Int64)}).join(
        index, on=S.ITEM, how="left", maintain_order="left"
    )
    if found["_row"].null_count():
        raise ValueError("ids missing from the item table")
    return torch.from_numpy(found["_row"].cast(pl.Int64).to_numpy().copy())


def _open_llm(cfg: TeacherConfig, progress: bool) -> LLM | None:
    if cfg.mode != "llm":
        return None
    from semid.io import cache_dir

    path = Path(cfg.cache) if cfg.cache else cache_dir() / "llm.sqlite"
    return LLM(cfg.llm, LLMCache(path), progress=progress)


def rgcd_build(
    data_dir: str | Path,
    out: str | Path,
    cfg: RGCDConfig = RGCDConfig(),  # noqa: B008 -- a frozen config
    *,
    llm: LLM | None = None,
    progress: bool = True,
) -> RGCDResult:
    """Build RGCD-Rep cross-domain IDs for the prepared dataset `data_dir` into the folder `out`.

    `llm`: the teacher's LLM (mode "llm"); None opens the one `cfg.teacher` names."""
    out_path = check_output_dir(out, COMMAND)  # before any work
    start = time.perf_counter()
    data_dir = Path(data_dir)
    prepared = data.load(data_dir)
    items = item_domains(prepared, data_dir / S.ITEMS_FILE)
    target_domain = prepared.meta.get("target_domain")
    source, target = read_events(data_dir, prepared.splits["train"])
    pairs = co_engaged_pairs(source, target, cfg.pairs)
    if pairs.height < 2:
        raise InputError(
            f"only {pairs.height} co-engaged pairs within window {cfg.pairs.window}",
            file=data_dir,
            fix="raise pairs.window or lower pairs.min_users",
        )
    pairs = pairs.with_columns(pl.Series(HELD_OUT, held_out_mask(pairs.height, cfg.eval)))
    if int((~pairs[HELD_OUT]).sum()) < 2:
        raise InputError(f"fewer than 2 of {pairs.height} pairs left for training", fix="lower eval.held_out")
    paired = pl.concat([pairs[SOURCE_ITEM], pairs[TARGET_ITEM]]).unique().cast(pl.Int32)
    if cfg.items == "paired":
        items = items.filter(pl.col(S.ITEM).is_in(paired.implode()))
    if target_domain is None:
        target_domain = items.filter(pl.col(S.ITEM).is_in(pairs[TARGET_ITEM].implode()))[DOMAIN_COL].mode()[0]

    # teacher: facets of the paired items (what the student distils), transferability of every pair
    paired_items = items.filter(pl.col(S.ITEM).is_in(paired.implode()))
    opened = _open_llm(cfg.teacher, progress) if llm is None else None
    try:
        taught = teach(paired_items, pairs, cfg.teacher, llm=llm or opened)
    finally:
        if opened is not None:
            opened.cache.close()
    pairs = taught.pairs

    # student: rows = the table's items; pairs / facet targets index into the paired items
    encoder = ContentEncoder(cfg.encoder)
    texts = items[S.TEXT].to_list()
    facet_text = serialise(paired_items.select(S.ITEM).join(taught.facets, on=S.ITEM, maintain_order="left"))
    facet_targets = embed_all(encoder, facet_text, progress=progress)  # (N_paired, D)
    train_pairs = pairs.filter(~pl.col(HELD_OUT))
    pair_rows = torch.stack(
        [_rows(train_pairs[SOURCE_ITEM], paired_items), _rows(train_pairs[TARGET_ITEM], paired_items)], dim=1
    )  # (P, 2)
    transfer = torch.tensor(train_pairs[TRANSFER].to_numpy(), dtype=torch.float32)  # (P,)
    # the student's initialisation is seeded, the caller's RNG left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.student.seed)
        student = ChorusStudent(encoder, teacher_dim=facet_targets.shape[1], cfg=cfg.student)
    history = train_student(
        student,
        paired_items[S.TEXT].to_list(),
        facet_targets,
        pair_rows,
        transfer,
        progress=progress,
    )
    z = embed(student, texts, progress=progress)
    raw = embed_all(encoder, texts, progress=progress)  # (N, H) the frozen encoder's vectors

    # pair retrieval on held-out pairs: the paired target among every target-domain item of the table
    test = pairs.filter(pl.col(HELD_OUT))
    queries, truth = _rows(test[SOURCE_ITEM], items), _rows(test[TARGET_ITEM], items)  # (P_test,), (P_test,)
    candidates = torch.tensor(np.flatnonzero(items[DOMAIN_COL].to_numpy() == target_domain), dtype=torch.long)
    both = torch.cat([z.z_t, z.z_r], dim=-1)
    k = cfg.eval.k
    recall = {
        name: recall_at_k(vectors, queries, truth, candidates, k)
        for name, vectors in (("z_t", z.z_t), ("z_r", z.z_r), ("z_t+z_r", both), ("raw", raw))
    }

    # quantise z_t: one ID table over both domains
    z_t = z.z_t.clone()  # (N, dim) a normal tensor (embed ran in inference mode)
    rq = train_rqvae(z_t, cfg.rqvae, progress_bar=progress)
    codes = rq.encode(z_t)  # (N, L)
    keys = items[S.ITEM].to_numpy()
    table = make_table(keys, codes, key=S.ITEM)
    h = health(table, rq.codebook_sizes)
    check_health(h, cfg.rqvae.min_level0_utilization, what="items")
    data_hash = prepared.meta.get("data_hash")
    encoder_id = f"rgcd z_t (chorus-token student over {encoder.path.name}, identity {encoder.identity[:16]})"
    facts = {
        "schema_version": S.SCHEMA_VERSION,
        "format": FORMAT,
        "command": COMMAND,
        "dataset": prepared.meta.get("dataset"),
        "data_hash": data_hash,
        "target_domain": target_domain,
        "config": asdict(cfg),
    }
    report = {
        **facts,
        "pairs": {
            "total": pairs.height,
            "train": train_pairs.height,
            "held_out": test.height,
            "items": paired.len(),
            "mean_score": float(pairs["score"].mean()),
        },
        "teacher": taught.summary,
        "history": history._asdict(),
        f"recall@{k}": recall,
        "table_items": table.height,
        "health": h,
        "seconds": time.perf_counter() - start,
    }
    meta = table_meta(
        key=S.ITEM,
        codebook_sizes=rq.codebook_sizes,
        health=h,
        encoder=encoder_id,
        seed=cfg.rqvae.seed,
        data_hash=data_hash,
    )
    emb = pl.DataFrame(
        {S.ITEM: keys.astype(np.int32), S.EMBEDDING: z_t.numpy()},
        schema={S.ITEM: pl.Int32, S.EMBEDDING: pl.Array(pl.Float32, z_t.shape[1])},
    )
    with owned_output_dir(out_path, COMMAND) as tmp:
        write_table(table, tmp / S.ITEM_SIDS_FILE, {**meta, "rgcd": {f"recall@{k}": recall}, **facts})
        save_rqvae(
            rq, cfg.rqvae, tmp / S.ITEM_RQVAE_FILE, meta={"data_hash": data_hash, "encoder": encoder_id}
        )
        write_parquet(emb, tmp / S.ITEM_EMB_FILE, facts)
        write_parquet(pairs, tmp / PAIRS_FILE, facts)
        write_parquet(taught.facets, tmp / FACETS_FILE, facts)
        state = {n: p.detach() for n, p in student.state_dict().items() if not n.startswith("encoder.")}
        save_checkpoint(
            {"state_dict": state, "config": asdict(cfg.student), "meta": facts}, tmp / STUDENT_FILE
        )
        write_json(report, tmp / REPORT_FILE)
    return RGCDResult(out=out_path, recall=recall, report=report)
