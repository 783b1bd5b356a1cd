"""`semid imagine`: train the semantic-ID diffusion model on a prepared dataset and write the imagined behaviours
of its short-history users (ReaSeq's beyond-log behaviours), with their consistency against baselines."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from semid import data
from semid import schema as S
from semid.checkpoint import save_checkpoint
from semid.errors import InputError
from semid.ids import read_table
from semid.imagine import (
    CONSISTENCY_FILE,
    IMAGINE_MODEL_FILE,
    IMAGINED_FILE,
    ImagineConfig,
    ModelConfig,
    TrainConfig,
    imagine_behaviours,
    markdown,
)
from semid.io import check_output_dir, owned_output_dir, sha256_file, write_json, write_parquet

COMMAND = "semid imagine"
FORMAT = 1


def _item_table(semids: str) -> Path:
    """The item ID table of `semids` (a `semid build` folder, or the item_sids.parquet file itself)."""
    path = Path(semids).expanduser()
    return path / S.ITEM_SIDS_FILE if path.is_dir() else path


def imagine(
    data_dir: str,
    semids: str,
    out: str,
    k: int = 5,
    steps: int | None = None,
    max_history: int = 5,
    all_users: bool = False,
    beam: int | None = None,
    model: ModelConfig = ModelConfig(),  # noqa: B008 -- a config dataclass, never mutated
    train: TrainConfig = TrainConfig(),  # noqa: B008
) -> Path:
    """Imagine `k` behaviours for each user with at most `max_history` train positives.

    Args:
        data_dir: a prepared dataset directory (`semid prepare`).
        semids: a `semid build` output directory (or its item_sids.parquet) built from `data_dir`.
        out: output directory: imagined.parquet (user_id, rank, item_id, confidence, imagined=True),
            imagine_model.pt and consistency.json. It must be new, empty, or an earlier output of `semid imagine`.
        k: behaviours imagined per user.
        steps: unmasking steps (default: k, one slot per step).
        max_history: imagine for users with at most this many train positives.
        all_users: imagine for every user instead.
        beam: score each imagined slot by a beam search that keeps this many code prefixes per level (e.g. 64)
            instead of every item of the catalogue (default: exact). Needed on catalogues of tens of thousands
            of items; the same result when the beam holds every prefix.
        model: the diffusion transformer's sizes (max_len must exceed k).
        train: masking, loss weighting, optimiser, epochs and seed.

    Returns:
        the output directory.
    """
    out_path = check_output_dir(out, COMMAND)  # before any work
    if k < 1 or max_history < 0 or (steps is not None and steps < 1):
        raise InputError(
            f"k={k}, steps={steps}, max_history={max_history}",
            fix="use k >= 1, steps >= 1 (or leave it unset) and max_history >= 0",
        )
    if beam is not None and beam < 1:
        raise InputError(
            f"beam={beam}", fix="use --beam >= 1 (prefixes kept per level), or leave it unset: exact"
        )
    if model.max_len <= k:
        raise InputError(
            f"model.max_len={model.max_len} leaves no room for history before k={k} imagined slots",
            fix="raise model.max_len or lower k",
        )
    start = time.perf_counter()
    prepared = data.load(data_dir)
    table_path = _item_table(semids)
    table, meta = read_table(table_path, key=S.ITEM, data_hash=prepared.meta.get("data_hash"))
    cfg = ImagineConfig(
        k=k,
        steps=steps,
        max_history=max_history,
        all_users=all_users,
        beam=beam,
        model=model,
        train=train,
    )
    result = imagine_behaviours(prepared, table, meta["codebook_sizes"], cfg)

    facts = {
        "schema_version": S.SCHEMA_VERSION,
        "format": FORMAT,
        "command": COMMAND,
        "k": k,
        "steps": steps or k,
        "max_history": None if all_users else max_history,
        "all_users": all_users,
        "beam": beam,
        "model": asdict(model),
        "train": asdict(train),
        "seed": train.seed,
        "data_hash": prepared.meta.get("data_hash"),
        "id_table": {"sha256": sha256_file(table_path), "codebook_sizes": meta["codebook_sizes"]},
        "id_levels": "sid_0..sid_{L-1}; the dedup suffix is dropped (ties: most popular item)",
        "users": result.imagined[S.USER].n_unique(),
        "final_loss": result.losses[-1] if result.losses else None,
    }
    with owned_output_dir(out_path, COMMAND) as tmp:
        write_parquet(result.imagined, tmp / IMAGINED_FILE, facts)
        save_checkpoint(
            {
                "state_dict": result.model.state_dict(),
                "codebook_sizes": meta["codebook_sizes"],
                "meta": facts,
            },
            tmp / IMAGINE_MODEL_FILE,
        )
        write_json(
            {**facts, "losses": result.losses, "comparison": result.comparison.to_dicts()},
            tmp / CONSISTENCY_FILE,
        )
    print(markdown(result.comparison), flush=True)
    row = result.comparison.row(0, named=True)
    print(
        f"[imagine] {facts['users']:,} users x {k} imagined; level-1 consistency {row['consistency']:.3f} on "
        f"{row['users']:,} users with val/test positives ({time.perf_counter() - start:.1f}s) -> {out_path}",
        flush=True,
    )
    return out_path


def main(args: list[str] | None = None) -> None:
    """`python -m pipelines.imagine ...` = `semid imagine ...` (without `--debug`)."""
    from jsonargparse import CLI

    from semid.errors import user_errors

    with user_errors("semid"):
        CLI(imagine, args=args)


if __name__ == "__main__":
    main()
