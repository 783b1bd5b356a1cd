"""`semid rgcd`: RGCD-Rep cross-domain semantic IDs (transferable z_t quantised by the RQ-VAE) for a cross-domain
prepared dataset, with the pair-retrieval recall of z_t against the raw encoder embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from semid.crossdomain import EvalConfig, PairConfig, RGCDConfig, StudentConfig, TeacherConfig, rgcd_build
from semid.crossdomain.build import REPORT_FILE
from semid.encoder import EncoderConfig
from semid.rqvae import RQVAEConfig


def rgcd(
    data_dir: str,
    out: str,
    pairs: PairConfig = PairConfig(),  # noqa: B008 -- frozen config dataclasses
    teacher: TeacherConfig = TeacherConfig(),  # noqa: B008
    student: StudentConfig = StudentConfig(),  # noqa: B008
    rqvae: RQVAEConfig = RQVAEConfig(),  # noqa: B008
    encoder: EncoderConfig = EncoderConfig(),  # noqa: B008
    eval: EvalConfig = EvalConfig(),  # noqa: A002,B008 -- the option is called --eval.*
    items: Literal["all", "paired"] = "all",
    progress: bool = True,
) -> Path:
    """Build RGCD-Rep cross-domain item IDs.

    Args:
        data_dir: a cross-domain prepared dataset (`semid prepare --dataset amazon-food-kitchen`).
        out: output folder (item_sids.parquet, item_rqvae.pt, item_embeddings.parquet = z_t, pairs.parquet,
            facets.parquet, rgcd_student.pt, rgcd.json); new, empty or an earlier output of `semid rgcd`.
        pairs: co-engagement window, decay, minimum users, cap on pairs (best-scored kept).
        teacher: mode "fallback" (deterministic facets and facet-word overlap) or "llm" (the knowledge layer's
            LLM with JSON schemas, answers cached in `teacher.cache`).
        student: chorus tokens, injection layer, z size, losses (use_routing=False: the no-routing ablation),
            epochs, seed.
        rqvae: the RQ-VAE quantising z_t.
        encoder: the text encoder (a BERT-style local folder; default all-MiniLM-L6-v2).
        eval: held-out fraction of pairs and k of the pair-retrieval recall@k.
        items: all (every item gets an ID) or paired (only the items of the pairs).
        progress: progress bars.

    Returns:
        the output folder.
    """
    cfg = RGCDConfig(
        pairs=pairs, teacher=teacher, student=student, rqvae=rqvae, encoder=encoder, eval=eval, items=items
    )
    result = rgcd_build(data_dir, out, cfg, progress=progress)
    k = cfg.eval.k
    recall = ", ".join(f"{name} {value:.3f}" for name, value in result.recall.items())
    report = result.report
    print(
        f"[rgcd] {report['pairs']['total']:,} pairs ({report['pairs']['held_out']:,} held out), "
        f"{report['table_items']:,} items; recall@{k} {recall}; collisions "
        f"{report['health']['collision_rate']:.2%} ({report['seconds']:.0f}s) -> {result.out / REPORT_FILE}",
        flush=True,
    )
    return result.out


def main(args: list[str] | None = None) -> None:
    """`python -m pipelines.rgcd ...` = `semid rgcd ...`."""
    from jsonargparse import CLI

    from semid.errors import user_errors

    with user_errors("semid"):
        CLI(rgcd, args=args)


if __name__ == "__main__":
    main()
