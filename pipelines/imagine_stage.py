"""The `imagine:` stage of `semid run` (ReaSeq's beyond-log behaviours): `semid imagine` run once on the run's
prepared data and item IDs, and the fit argument that points the models reading imagined behaviours at its output.

    imagine:
      k: 5                 # behaviours imagined per user
      max_history: 5       # for users with at most this many train positives
      beam: 64             # optional: beam search over the ID prefixes (large catalogues); default exact
      train: {epochs: 30}  # the diffusion model's training (semid.imagine.TrainConfig)

Output: `<run>/imagined/` (`semid imagine`'s folder: imagined.parquet, imagine_model.pt, consistency.json) and
`<run>/imagined/stage.json`, written after it with the stage hash (prepared data, item ID table contents, the
section's settings), so a re-run skips the stage when nothing changed (`semid.io.stage_done`). A model whose network
reads the imagined view (ImaginedDeepFM, ImaginedDIN or a subclass: `reads_imagined`) gets
`--data.imagined <run>/imagined/imagined.parquet` in its fit and in each of its tuning trials, and the stage hash
joins its fit fingerprint; every other model gets neither, so its fit (and hash) is what it was without the stage,
and a new imagine setting re-fits only the models that read the file (the stage's file replaces any `data.imagined`
a model config sets). A model that reads the view in a pipeline without an `imagine:` section (and without a
`data.imagined` of its own in its configs) is refused before any work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pipelines.fit import net_class, net_is
from semid import schema as S
from semid.errors import InputError
from semid.imagine import IMAGINED_FILE, ModelConfig, TrainConfig
from semid.io import read_meta, sha256_file, sha256_json, stage_done, write_json

IMAGINED_DIR = "imagined"
"""<run>/imagined/: the `semid imagine` output of the stage."""
STAGE_RECORD = "stage.json"
"""<run>/imagined/stage.json: the stage hash and settings, written after the folder (its presence marks it done)."""


@dataclass(frozen=True)
class ImagineStage:
    """The `imagine:` section of a pipeline config: the arguments of `semid imagine` (pipelines/imagine.py)."""

    k: int = 5
    """Behaviours imagined per user."""
    steps: int | None = None
    """Unmasking steps (None: k, one slot per step)."""
    max_history: int = 5
    """Imagine for users with at most this many train positives."""
    all_users: bool = False
    """Imagine for every user instead."""
    beam: int | None = None
    """Beam search keeping this many ID prefixes per level (None: exact scoring of every item)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The diffusion transformer's sizes (max_len must exceed k)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Masking, loss weighting, optimiser, epochs, seed and threads."""


class ImagineOutputs(NamedTuple):
    path: Path
    """<run>/imagined/imagined.parquet"""
    stage_hash: str


class ImaginedInput(NamedTuple):
    """What one model's fit (or tuning trial) reads from the stage."""

    path: Path | None = None
    fingerprint: dict[str, str] = {}
    """Joins the fit's stage hash; {} for a model that reads no imagined view, so its hash is unchanged."""

    def args(self) -> list[str]:
        """The `ctr fit` arguments (none for a model that reads no imagined view)."""
        return [] if self.path is None else ["--data.imagined", str(self.path)]


NO_IMAGINED = ImaginedInput()


def reads_imagined(configs: Sequence[Any]) -> bool:
    """Whether the network of these parsed configs reads the imagined view: ImaginedDeepFM, ImaginedDIN or a
    subclass (each refuses to build without `data.imagined`)."""
    from ctr.models.imagined import ImaginedDeepFM, ImaginedDIN

    return net_is(configs, ImaginedDeepFM, ImaginedDIN)


def sets_imagined(configs: Sequence[Any]) -> bool:
    """Whether one of these parsed configs sets `data.imagined` itself (a file of the user's own)."""
    for cfg in configs:
        data = cfg.get("data") if isinstance(cfg, Mapping) else None
        if isinstance(data, Mapping) and data.get("imagined"):
            return True
    return False


def check_imagined(stage: ImagineStage | None, configs: Mapping[str, Sequence[Any]]) -> None:
    """Before any work: every model whose network reads the imagined view has it, from the stage or from a
    `data.imagined` of its own configs, and the stage's beam is valid. `configs`: model name -> its parsed configs
    (common ones first)."""
    if stage is not None:
        if stage.beam is not None and stage.beam < 1:
            raise InputError(
                f"imagine: beam={stage.beam}",
                fix="set `imagine: {beam: N}` with N >= 1 (prefixes kept per level), or remove it: exact",
            )
        return
    for name, parsed in configs.items():
        if reads_imagined(parsed) and not sets_imagined(parsed):
            raise InputError(
                f"model {name!r} ({net_class(parsed)}) reads imagined behaviours, and the pipeline has no "
                "`imagine:` section to make them",
                fix="add an `imagine:` section to the pipeline config (e.g. `imagine: {k: 5, max_history: 5}`), "
                "or remove the model",
            )


def imagined_input(outputs: ImagineOutputs | None, configs: Sequence[Any]) -> ImaginedInput:
    """The stage's file for a model whose network reads it (`configs`: its parsed configs, common ones first);
    nothing for any other model, or without the stage."""
    if outputs is None or not reads_imagined(configs):
        return NO_IMAGINED
    return ImaginedInput(outputs.path, {"imagined": outputs.stage_hash})


def stage_settings(stage: ImagineStage) -> dict[str, Any]:
    """The section's settings as they enter the stage hash: every field, except a beam left at None, so the exact
    default keeps the hash that runs made before the option existed."""
    settings = asdict(stage)
    if stage.beam is None:
        del settings["beam"]
    return settings


def run_imagine(stage: ImagineStage, prepared: Path, semids: Path, run_dir: Path) -> ImagineOutputs:
    """The stage: `semid imagine` into `<run_dir>/imagined/`, skipped when its record holds the same stage hash."""
    from pipelines.imagine import FORMAT, imagine

    folder = run_dir / IMAGINED_DIR
    item_sids = semids / S.ITEM_SIDS_FILE
    settings = stage_settings(stage)
    stage_hash = sha256_json(
        {
            "data": read_meta(prepared / S.ITEMS_FILE)["data_hash"],
            "item_sids": sha256_file(item_sids),
            "format": FORMAT,
            "settings": settings,
        }
    )
    outputs = ImagineOutputs(folder / IMAGINED_FILE, stage_hash)
    if stage_done(folder / STAGE_RECORD, stage_hash) and outputs.path.is_file():
        print(f"[imagine] {IMAGINED_FILE}: up to date", flush=True)
        return outputs
    imagine(  # prints its comparison table and its own summary line
        str(prepared),
        str(item_sids),
        str(folder),
        k=stage.k,
        steps=stage.steps,
        max_history=stage.max_history,
        all_users=stage.all_users,
        beam=stage.beam,
        model=stage.model,
        train=stage.train,
    )
    write_json({"stage_hash": stage_hash, "settings": settings}, folder / STAGE_RECORD)  # last: marks it done
    return outputs
