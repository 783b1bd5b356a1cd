"""The `crossdomain:` stage of `semid run` (issue 17): RGCD-Rep cross-domain item IDs (`semid rgcd`) and AIR intent
paths (`semid intents`) built once on the run's prepared data, and the fit arguments of the models that read them.

    crossdomain:
      rgcd: {teacher: {mode: fallback}, no_routing: true}   # the `semid rgcd` arguments; omit to skip
      intents: {use_llm: false}                              # the `semid intents` arguments; omit to skip
    models:
      - {name: deepfm_source, config: configs/ctr/deepfm.yaml, inputs: [source_history]}
      - {name: sid_rgcd, config: configs/ctr/sid_features.yaml, inputs: [source_history, rgcd_ids]}
      - {name: air, config: configs/ctr/air/air.yaml}        # AIRNet: gets the intents by its class

Outputs: `<run>/rgcd/` (`semid rgcd`'s folder: item_sids.parquet, rgcd.json with the pair-retrieval recall, ...),
with `no_routing: true` also `<run>/rgcd_no_routing/` (the same build without the routing loss: the issue's
ablation), and `<run>/intents/intents.parquet` (the fallback names the run's own `semids/item_sids.parquet`
prefixes). Each folder ends with a `stage.json` holding its stage hash (prepared data, the ID table the intents
name, the section's settings), so a re-run skips what is up to date (`semid.io.stage_done`).

What a model reads is decided per model, never written into its YAML:
- `inputs: [source_history]`: `--data.source_history <run>/prepared` (the Food events of an amazon-food-kitchen
  run join the history, typed in `Batch.hist_type`): the naive cross-domain arm, for any history model;
- `inputs: [rgcd_ids]` (or `rgcd_ids_no_routing`): `--data.item_sids <run>/rgcd/item_sids.parquet` instead of the
  `semid build` table, refused unless that table covers every item of the prepared data;
- an AIRNet network (or a subclass) gets `--model.net.init_args.intents <run>/intents/intents.parquet`.
Only the inputs a model reads join its fit and tuning fingerprints, so a model that reads none keeps the hash it
had without the section. A model asking for an input whose stage is absent is refused before any work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pipelines.fit import net_class, net_is
from semid import schema as S
from semid.amazon import SOURCE_HISTORY
from semid.crossdomain import EvalConfig, PairConfig, StudentConfig, TeacherConfig
from semid.crossdomain.build import FORMAT as RGCD_FORMAT
from semid.encoder import EncoderConfig
from semid.errors import InputError
from semid.intents import INTENTS_FILE, IntentConfig
from semid.intents import VERSION as INTENTS_VERSION
from semid.io import read_meta, sha256_file, sha256_json, stage_done, write_json
from semid.knowledge import CacheMode, LLMConfig
from semid.rqvae import RQVAEConfig

CrossInput = Literal["source_history", "rgcd_ids", "rgcd_ids_no_routing"]
"""What a model entry may ask for in `inputs:`."""
RGCD_DIR = "rgcd"
"""<run>/rgcd/: the `semid rgcd` output of the stage."""
RGCD_NO_ROUTING_DIR = "rgcd_no_routing"
"""<run>/rgcd_no_routing/: the same build without the routing loss (`rgcd: no_routing: true`)."""
INTENTS_DIR = "intents"
"""<run>/intents/: intents.parquet (and the LLM answer cache of `use_llm: true`)."""
STAGE_RECORD = "stage.json"
"""<folder>/stage.json: the stage hash and settings, written after the folder's files (its presence marks it done)."""
AMAZON = "amazon-food-kitchen"


@dataclass(frozen=True)
class RGCDStage:
    """The `crossdomain: rgcd:` section: the arguments of `semid rgcd` (pipelines/rgcd.py)."""

    pairs: PairConfig = field(default_factory=PairConfig)
    """Co-engagement window, decay, minimum users, cap on pairs."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """mode fallback (deterministic facets and word overlap) or llm (the knowledge layer's LLM, cached)."""
    student: StudentConfig = field(default_factory=StudentConfig)
    """Chorus tokens, z size, losses, epochs, seed."""
    rqvae: RQVAEConfig = field(default_factory=RQVAEConfig)
    """The RQ-VAE quantising z_t."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """The student's text encoder (a BERT-style model)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out pairs and k of the pair-retrieval recall@k."""
    items: Literal["all", "paired"] = "all"
    """all: every item gets an ID (what input rgcd_ids needs); paired: only the items of the pairs."""
    no_routing: bool = False
    """Also build the ablation without the routing loss (student.use_routing false) into <run>/rgcd_no_routing/,
    read by the models with input rgcd_ids_no_routing."""


@dataclass(frozen=True)
class IntentsStage:
    """The `crossdomain: intents:` section: the arguments of `semid intents` (pipelines/intents.py); the fallback
    names the run's own item ID prefixes (<run>/semids/item_sids.parquet)."""

    use_llm: bool = False
    """Ask the LLM for each item's intent paths (invalid or empty answers fall back to the ID prefixes)."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """The LLM backend (default: the embedded SmolLM2)."""
    cache: str | None = None
    """The SQLite answer cache (default: <run>/intents/llm_cache.sqlite)."""
    cache_mode: CacheMode = "read-write"
    config: IntentConfig = field(default_factory=IntentConfig)
    """Paths per item, depth, prompt and fallback naming settings."""


@dataclass(frozen=True)
class CrossDomainStage:
    """The `crossdomain:` section of a pipeline config (each part optional)."""

    rgcd: RGCDStage | None = None
    intents: IntentsStage | None = None


class Built(NamedTuple):
    """One input the stage made, found up to date or checked (a file, or the prepared folder) and its hash."""

    path: Path
    stage_hash: str


class CrossOutputs(NamedTuple):
    """What the stage wrote or checked (None: not asked for)."""

    source_history: Built | None = None
    """The prepared folder (`data.source_history` reads its source_history.parquet) and that file's hash."""
    rgcd: Built | None = None
    rgcd_no_routing: Built | None = None
    intents: Built | None = None


class CrossInputs(NamedTuple):
    """What one model's fit (or tuning trial) reads from the stage."""

    source_history: Path | None = None
    item_sids: Path | None = None
    """The RGCD table replacing the `semid build` one (input rgcd_ids / rgcd_ids_no_routing)."""
    intents: Path | None = None
    net_class: str | None = None
    """The network class path (the intents argument belongs to it)."""
    fingerprint: dict[str, str] = {}
    """Joins the fit's stage hash; {} for a model that reads nothing of the stage, so its hash is unchanged."""

    def args(self) -> list[str]:
        """The `ctr fit` arguments (none for a model that reads nothing of the stage)."""
        out = [] if self.source_history is None else ["--data.source_history", str(self.source_history)]
        out += [] if self.item_sids is None else ["--data.item_sids", str(self.item_sids)]
        out += [] if self.intents is None else ["--model.net.init_args.intents", str(self.intents)]
        return out

    def config(self) -> dict[str, Any]:
        """The same inputs as a config mapping (source history, intents; not the ID table), for `ctr tune`, which
        takes configs: applied before the model's own YAML, whose network class it repeats."""
        out: dict[str, Any] = {}
        if self.source_history is not None:
            out["data"] = {"source_history": str(self.source_history)}
        if self.intents is not None:
            out["model"] = {
                "net": {"class_path": self.net_class, "init_args": {"intents": str(self.intents)}}
            }
        return out


NO_CROSS = CrossInputs()


def reads_intents(configs: Sequence[Any]) -> bool:
    """Whether the network of these parsed configs (applied in order) is AIRNet or a subclass: it needs intents."""
    from ctr.models.air import AIRNet

    return net_is(configs, AIRNet)


def sets_intents(configs: Sequence[Any]) -> bool:
    """Whether one of these parsed configs sets `model.net.init_args.intents` itself (a file of the user's own)."""
    for cfg in configs:
        model = cfg.get("model") if isinstance(cfg, Mapping) else None
        net = model.get("net") if isinstance(model, Mapping) else None
        args = net.get("init_args") if isinstance(net, Mapping) else None
        if isinstance(args, Mapping) and args.get("intents"):
            return True
    return False


def check_crossdomain(
    stage: CrossDomainStage | None,
    dataset: str | None,
    wants: Mapping[str, Sequence[CrossInput]],
    configs: Mapping[str, Sequence[Any]],
) -> None:
    """Before any work: every input a model asks for has its stage, and every AIRNet model has intents.

    `dataset`: the prepare stage's built-in dataset; `wants`: model name -> its `inputs:`; `configs`: model name ->
    its parsed configs (common ones first)."""
    rgcd = stage.rgcd if stage is not None else None
    intents = stage.intents if stage is not None else None
    for name, inputs in wants.items():
        if "source_history" in inputs and dataset != AMAZON:
            raise InputError(
                f"model {name!r} asks for input source_history, which only a prepared {AMAZON} dataset has "
                f"(this run prepares {dataset or 'your own files'})",
                fix=f"prepare `dataset: {AMAZON}`, or remove source_history from the model's `inputs:`",
            )
        if "rgcd_ids" in inputs and "rgcd_ids_no_routing" in inputs:
            raise InputError(
                f"model {name!r} asks for both rgcd_ids and rgcd_ids_no_routing: one item ID table per model",
                fix="keep one of them in the model's `inputs:` (add a second model entry for the other)",
            )
        for wanted in ("rgcd_ids", "rgcd_ids_no_routing"):
            if wanted not in inputs:
                continue
            if rgcd is None:
                raise InputError(
                    f"model {name!r} asks for input {wanted}, and the pipeline has no `crossdomain: rgcd:` "
                    "section to build the RGCD-Rep IDs",
                    fix="add `crossdomain: {rgcd: {}}` to the pipeline config, or remove the input",
                )
            if wanted == "rgcd_ids_no_routing" and not rgcd.no_routing:
                raise InputError(
                    f"model {name!r} asks for input {wanted}, and `crossdomain: rgcd:` does not build the "
                    "no-routing ablation",
                    fix="set `crossdomain: rgcd: no_routing: true`, or remove the input",
                )
            if rgcd.items != "all":
                raise InputError(
                    f"model {name!r} asks for input {wanted}, and `crossdomain: rgcd: items: {rgcd.items}` gives "
                    "IDs to the paired items only, so the CTR model would miss the others",
                    fix="set `crossdomain: rgcd: items: all` (the default)",
                )
    if intents is None:
        for name, parsed in configs.items():
            if reads_intents(parsed) and not sets_intents(parsed):
                raise InputError(
                    f"model {name!r} ({net_class(parsed)}) reads AIR intent paths, and the pipeline has no "
                    "`crossdomain: intents:` section to build them",
                    fix="add `crossdomain: {intents: {use_llm: false}}` to the pipeline config, or remove the model",
                )


def cross_inputs(
    outputs: CrossOutputs | None, wants: Sequence[CrossInput], configs: Sequence[Any]
) -> CrossInputs:
    """What one model reads: the inputs it asks for (`wants`) and, for an AIRNet network, the intents
    (`configs`: its parsed configs, common ones first). check_crossdomain ran before any work."""
    if outputs is None:
        return NO_CROSS
    found: dict[str, Any] = {}
    fingerprint: dict[str, str] = {}
    if "source_history" in wants and outputs.source_history is not None:
        found["source_history"] = outputs.source_history.path
        fingerprint["source_history"] = outputs.source_history.stage_hash
    for wanted, built in (("rgcd_ids", outputs.rgcd), ("rgcd_ids_no_routing", outputs.rgcd_no_routing)):
        if wanted in wants and built is not None:
            found["item_sids"] = built.path
            fingerprint[wanted] = built.stage_hash
    if outputs.intents is not None and reads_intents(configs):
        found["intents"] = outputs.intents.path
        found["net_class"] = net_class(configs)
        fingerprint["intents"] = outputs.intents.stage_hash
    return CrossInputs(**found, fingerprint=fingerprint) if fingerprint else NO_CROSS


def source_history_input(prepared: Path) -> Built:
    """After prepare, for a run with a source_history model: the prepared folder, which must hold the Food events,
    and the hash of their file (it joins the fits that read it)."""
    path = prepared / f"{SOURCE_HISTORY}.parquet"
    if not path.is_file():
        raise InputError(
            "the prepared data has no source-domain history",
            file=path,
            fix=f"prepare the {AMAZON} dataset (its reader writes {path.name}), or remove source_history from "
            "the models' `inputs:`",
        )
    return Built(prepared, sha256_file(path))


def check_rgcd_covers(table: Path, prepared: Path) -> None:
    """The RGCD ID table was built from this prepared data and gives every one of its items an ID (what a CTR model
    reading it as `data.item_sids` needs); one InputError naming the table otherwise."""
    import numpy as np
    import polars as pl

    from ctr.data.readers import require_every_id
    from semid.ids import read_table

    data_hash = read_meta(prepared / S.ITEMS_FILE)["data_hash"]
    found, _ = read_table(table, key=S.ITEM, data_hash=data_hash)
    n = pl.scan_parquet(prepared / S.ITEMS_FILE).select(pl.len()).collect().item()
    require_every_id(
        found[S.ITEM].cast(pl.Int64).to_numpy().astype(np.int64),
        n,
        path=table,
        key=S.ITEM,
        what="RGCD-Rep ID",
        fix="rebuild it with `crossdomain: rgcd: items: all` (the default) for this prepared data",
    )


def _rgcd(stage: RGCDStage, student: StudentConfig, prepared: Path, folder: Path) -> Built:
    """One RGCD build into `folder`, skipped when its record holds the same stage hash."""
    from pipelines.rgcd import rgcd

    settings = asdict(replace(stage, student=student, no_routing=False))
    stage_hash = sha256_json(
        {"data": read_meta(prepared / S.ITEMS_FILE)["data_hash"], "format": RGCD_FORMAT, "settings": settings}
    )
    built = Built(folder / S.ITEM_SIDS_FILE, stage_hash)
    if stage_done(folder / STAGE_RECORD, stage_hash) and built.path.is_file():
        print(f"[rgcd] {folder.name}: up to date", flush=True)
        return built
    rgcd(  # prints its own summary line (pairs, recall@k of z_t vs the raw embedding, collisions)
        str(prepared),
        str(folder),
        pairs=stage.pairs,
        teacher=stage.teacher,
        student=student,
        rqvae=stage.rqvae,
        encoder=stage.encoder,
        eval=stage.eval,
        items=stage.items,
        progress=False,
    )
    write_json({"stage_hash": stage_hash, "settings": settings}, folder / STAGE_RECORD)  # last: marks it done
    return built


def _intents(stage: IntentsStage, prepared: Path, semids: Path, folder: Path) -> Built:
    """`semid intents` into `<folder>/intents.parquet`, skipped when its record holds the same stage hash."""
    from pipelines.intents import intents

    item_sids = semids / S.ITEM_SIDS_FILE
    settings = asdict(stage)
    stage_hash = sha256_json(
        {
            "data": read_meta(prepared / S.ITEMS_FILE)["data_hash"],
            "item_sids": sha256_file(item_sids),
            "version": INTENTS_VERSION,
            "settings": settings,
        }
    )
    built = Built(folder / INTENTS_FILE, stage_hash)
    if stage_done(folder / STAGE_RECORD, stage_hash) and built.path.is_file():
        print(f"[intents] {INTENTS_FILE}: up to date", flush=True)
        return built
    folder.mkdir(parents=True, exist_ok=True)
    intents(  # prints its own summary line
        str(prepared),
        str(built.path),
        sids=str(item_sids),
        use_llm=stage.use_llm,
        llm=stage.llm,
        cache=stage.cache,
        cache_mode=stage.cache_mode,
        config=stage.config,
    )
    write_json({"stage_hash": stage_hash, "settings": settings}, folder / STAGE_RECORD)  # last: marks it done
    return built


def run_crossdomain(
    stage: CrossDomainStage | None,
    prepared: Path,
    semids: Path,
    run_dir: Path,
    *,
    rgcd_readers: Sequence[Path] = (),
    source_history: bool = False,
) -> CrossOutputs:
    """The stage: each asked-for build (skipped when up to date), and the checks of what the models read: the
    prepared source history (`source_history`: some model reads it) and full item coverage of every RGCD table
    folder in `rgcd_readers` (relative to `run_dir`)."""
    history = source_history_input(prepared) if source_history else None
    rgcd = no_routing = intents = None
    if stage is not None and stage.rgcd is not None:
        rgcd = _rgcd(stage.rgcd, stage.rgcd.student, prepared, run_dir / RGCD_DIR)
        if stage.rgcd.no_routing:
            student = replace(stage.rgcd.student, use_routing=False)
            no_routing = _rgcd(stage.rgcd, student, prepared, run_dir / RGCD_NO_ROUTING_DIR)
    if stage is not None and stage.intents is not None:
        intents = _intents(stage.intents, prepared, semids, run_dir / INTENTS_DIR)
    outputs = CrossOutputs(history, rgcd, no_routing, intents)
    for table in rgcd_readers:
        check_rgcd_covers(run_dir / table / S.ITEM_SIDS_FILE, prepared)
    return outputs


def rgcd_folders(wants: Mapping[str, Sequence[CrossInput]]) -> list[Path]:
    """The stage folders (relative to the run) whose RGCD table some model reads."""
    used = {w for inputs in wants.values() for w in inputs}
    return [
        Path(folder)
        for wanted, folder in (("rgcd_ids", RGCD_DIR), ("rgcd_ids_no_routing", RGCD_NO_ROUTING_DIR))
        if wanted in used
    ]
