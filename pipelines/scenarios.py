"""The `scenarios:` stage of `semid run` (multi-scenario CTR, LLM4MSR): the scenario table and the knowledge vectors
of a prepared dataset, built once, and the fit arguments that point each model at them.

    scenarios:
      rule: ml-1m-age                  # a semid.scenarios.RULES name
      knowledge: [llm, prompt_text]    # vector sources to build (the learned control needs none)
      llm: {model: smollm2}            # the knowledge layer's backend (semid.knowledge.LLMConfig)

Outputs: `<run>/scenarios.parquet` and `<run>/knowledge/<source>/{scenario,user}_vectors.parquet`
(semid.knowledge.msr), each finished by a JSON record holding its stage hash (`semid.io.stage_done`), so a re-run
skips what is up to date; the LLM's vectors are also cached per prompt in the knowledge layer's SQLite file, so a
rebuild after a changed prompt setting only computes the prompts that changed. Every model fit then reads the
scenario table (`--data.scenarios`); a `MetaLayers` network whose knowledge source is llm / prompt_text also gets
that source's two vector files. The paths are command-line arguments of the fit (and of each tuning trial), never
written into a model YAML, and their stage hashes join the fit's fingerprint, so new vectors re-fit the models that
read them and only those.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from semid import scenarios as SC
from semid import schema as S
from semid.encoder import EncoderConfig
from semid.errors import InputError
from semid.io import read_meta, sha256_json, stage_done, write_json
from semid.knowledge import LLMConfig, msr
from semid.knowledge.cache import CacheMode

KNOWLEDGE_DIR = "knowledge"
"""<run>/knowledge/<source>/: the vector files of one knowledge source."""
TABLE_RECORD = "scenarios.json"
"""<run>/scenarios.json: the scenario table's stage hash, rule and names, written after the table."""
VECTORS_RECORD = "stage.json"
"""<run>/knowledge/<source>/stage.json: the source's stage hash, model and LLM summary, written after its files."""
META_LAYERS = "ctr.models.meta.MetaLayers"
SOURCES: tuple[msr.Source, ...] = ("llm", "prompt_text")


@dataclass(frozen=True)
class ScenarioStage:
    """The `scenarios:` section of a pipeline config."""

    rule: str
    """A semid.scenarios.RULES name: ml-1m-age (Scenario-Wise-Rec age groups), amazon-domain (Food / Kitchen)."""
    knowledge: list[msr.Source] = field(default_factory=list)
    """Vector sources to build: llm (the LLM's last hidden layer over each scenario / user prompt, pooled as
    `llm.pooling` says), prompt_text (the text encoder's embedding of the same prompts: the no-LLM control). The
    learned control reads no file."""
    llm: LLMConfig = LLMConfig()
    """The knowledge layer's backend for source llm (default: the embedded SmolLM2-135M-Instruct)."""
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(max_length=512))
    """The text encoder of source prompt_text (default: all-MiniLM-L6-v2; prompts cut to 512 tokens, as the LLM's)."""
    prompts: msr.PromptConfig = msr.PromptConfig()
    """What the prompts show (top items / genres per scenario, recent items per user, title length)."""
    cache: str | None = None
    """The SQLite answer cache of the LLM (default: `<cache dir>/llm/knowledge.sqlite`, shared with `semid build`'s
    knowledge switch). Outside the run folder, so the vectors outlive any one run."""
    cache_mode: CacheMode = "read-write"
    """read-only: every LLM vector must already be cached (a miss is an error and no model is loaded)."""


class VectorFiles(NamedTuple):
    user: Path
    scenario: Path
    stage_hash: str


class ScenarioOutputs(NamedTuple):
    """What the stage wrote: the scenario table and, per built source, its vector files."""

    table: Path
    stage_hash: str
    vectors: dict[str, VectorFiles]


class FitInputs(NamedTuple):
    """What one model's fit (or tuning trial) reads from the stage: paths and the hashes of their contents."""

    scenarios: Path | None = None
    user_vectors: Path | None = None
    scenario_vectors: Path | None = None
    fingerprint: dict[str, str] = {}
    """Joins the fit's stage hash; {} without a scenarios stage, so that hash is what it was before the stage."""

    def args(self) -> list[str]:
        """The `ctr fit` command-line arguments (none without a scenarios stage)."""
        out = [] if self.scenarios is None else ["--data.scenarios", str(self.scenarios)]
        if self.user_vectors is not None and self.scenario_vectors is not None:
            out += ["--model.net.init_args.user_vectors", str(self.user_vectors)]
            out += ["--model.net.init_args.scenario_vectors", str(self.scenario_vectors)]
        return out


NO_INPUTS = FitInputs()


def knowledge_source(configs: Sequence[Any]) -> str | None:
    """The vector source a fit from these parsed `ctr fit` configs (applied in order) reads: llm / prompt_text for a
    MetaLayers network with that source (MetaLayers' own default when no config sets it), None for every other
    network and for source learned."""
    from ctr.models.meta import MetaLayers
    from ctr.module import class_path

    net_class: str | None = None
    source: Any = None
    for cfg in configs:
        model = cfg.get("model") if isinstance(cfg, Mapping) else None
        net = model.get("net") if isinstance(model, Mapping) else None
        if not isinstance(net, Mapping):
            continue
        if net.get("class_path"):
            path = class_path(str(net["class_path"]))
            if path != net_class:  # another class: the arguments of the earlier one no longer apply
                source = None
            net_class = path
        args = net.get("init_args")
        if isinstance(args, Mapping) and "source" in args:
            source = args["source"]
    if net_class != META_LAYERS:
        return None
    if source is None:
        source = inspect.signature(MetaLayers).parameters["source"].default
    return None if source == "learned" else str(source)


def check_sources(stage: ScenarioStage, configs: Mapping[str, Sequence[Any]]) -> None:
    """Before any work: the stage's sources are known, its LLM model names one it can reach (nothing is fetched or
    loaded), and every model whose network reads vectors has its source in `stage.knowledge`. `configs`: model name
    -> its parsed configs (common ones first)."""
    SC.resolve_rule(stage.rule)
    unknown = sorted(set(stage.knowledge) - set(SOURCES))
    if unknown:
        raise InputError(
            f"unknown knowledge sources {unknown} in scenarios.knowledge", fix=f"use some of {list(SOURCES)}"
        )
    if "llm" in stage.knowledge:
        _llm_backend(stage)  # an unknown `scenarios.llm.model` fails here, not after the IDs are built
    for name, parsed in configs.items():
        source = knowledge_source(parsed)
        if source is not None and source not in stage.knowledge:
            raise InputError(
                f"model {name!r} (MetaLayers, source {source}) reads {source} knowledge vectors, which the "
                f"scenarios stage does not build (knowledge: {list(stage.knowledge)})",
                fix=f"add {source} to `scenarios: knowledge:` in the pipeline config",
            )


def fit_inputs(outputs: ScenarioOutputs | None, configs: Sequence[Any]) -> FitInputs:
    """The scenario table for every fit, plus the vector files of its source for a MetaLayers network that reads
    them (`configs`: the fit's parsed configs, common ones first)."""
    if outputs is None:
        return NO_INPUTS
    source = knowledge_source(configs)
    if source is None:
        return FitInputs(outputs.table, fingerprint={"scenarios": outputs.stage_hash})
    files = outputs.vectors[source]  # check_sources ran before any work
    return FitInputs(
        outputs.table,
        files.user,
        files.scenario,
        {"scenarios": outputs.stage_hash, "knowledge": files.stage_hash},
    )


def _line(message: str, seconds: float) -> None:
    print(f"[scenarios] {message} ({seconds:.1f}s)", flush=True)


def _table(rule: SC.ScenarioRule, prepared: Path, run_dir: Path, data_hash: str) -> tuple[Path, str]:
    """<run>/scenarios.parquet, rebuilt only when the prepared data or the rule changed."""
    stage_hash = sha256_json({"data": data_hash, "rule": asdict(rule)})
    path, record = run_dir / SC.SCENARIOS_FILE, run_dir / TABLE_RECORD
    if stage_done(record, stage_hash) and path.is_file():
        print(f"[scenarios] {path.name}: up to date", flush=True)
        return path, stage_hash
    start = time.perf_counter()
    scen = SC.write(prepared, rule, path)
    sizes = scen.table.group_by(SC.SCENARIO).len().sort(SC.SCENARIO)["len"].to_list()
    write_json(
        {"stage_hash": stage_hash, "rule": asdict(rule), "names": list(scen.names), "entities": sizes}, record
    )
    counts = ", ".join(f"{n} {c:,}" for n, c in zip(scen.names, sizes))
    what = f"{path.name}: {len(scen.names)} scenarios by {rule.side} {rule.column} ({counts} {rule.side}s)"
    _line(what, time.perf_counter() - start)
    return path, stage_hash


def _answer_cache(stage: ScenarioStage, cache: str | None) -> Path:
    from semid.knowledge.enriched import KnowledgeConfig, answer_cache

    return answer_cache(KnowledgeConfig(cache=stage.cache), cache)


def _llm_backend(stage: ScenarioStage) -> tuple[dict[str, Any], Any]:
    """The LLM source's fingerprint (model weights + precision, pooling, prompt truncation; nothing is loaded) and
    its pinned config (`llm.dtype: auto` resolved on this machine, so the cache keys are stable)."""
    from semid.knowledge.enriched import KnowledgeConfig, pinned

    cfg, backend = pinned(KnowledgeConfig(enabled=True, llm=stage.llm))
    model = {"llm": backend.fingerprint, "pooling": cfg.llm.pooling, "max_length": cfg.llm.max_length}
    return model, (cfg.llm, backend)


def _vectors(
    stage: ScenarioStage,
    source: str,
    rule: SC.ScenarioRule,
    prepared: Path,
    run_dir: Path,
    table_hash: str,
    cache: str | None,
) -> VectorFiles:
    """One source's vector files, rebuilt only when its inputs changed (LLM vectors come from the SQLite cache
    where it has them)."""
    from semid.encoder import ContentEncoder, encode, fingerprint_settings, model_identity
    from semid.knowledge import LLM, LLMCache

    if source == "llm":
        model, (llm_cfg, backend) = _llm_backend(stage)
    else:
        model = {"encoder": model_identity(stage.encoder)[2], "settings": fingerprint_settings(stage.encoder)}
    stage_hash = sha256_json(
        {
            "scenarios": table_hash,
            "source": source,
            "template": msr.TEMPLATE_VERSION,
            "prompts": asdict(stage.prompts),
            "model": model,
        }
    )
    folder = run_dir / KNOWLEDGE_DIR / source
    files = VectorFiles(folder / msr.USER_VECTORS_FILE, folder / msr.SCENARIO_VECTORS_FILE, stage_hash)
    if stage_done(folder / VECTORS_RECORD, stage_hash) and files.user.is_file() and files.scenario.is_file():
        print(f"[scenarios] {source} vectors: up to date", flush=True)
        return files
    start = time.perf_counter()
    record: dict[str, Any] = {"stage_hash": stage_hash, "source": source, "model": model}
    if source == "llm":
        answers = _answer_cache(stage, cache)
        with LLMCache(answers, stage.cache_mode) as store:
            llm = LLM(llm_cfg, store, backend=backend)
            msr.build(
                prepared,
                rule,
                folder,
                msr.llm_embed(llm),
                source="llm",
                fingerprint=backend.fingerprint,
                cfg=stage.prompts,
            )
        record["llm"] = {task: s._asdict() for task, s in llm.last.items()}
        record["cache"] = str(answers)
        done = ", ".join(s.line(task).removeprefix("llm ") for task, s in llm.last.items())
    else:
        model_once: ContentEncoder | None = None  # one model for both prompt kinds, loaded on first use

        def embed(prompts: list[str], task: str) -> Any:
            nonlocal model_once
            if model_once is None:
                model_once = ContentEncoder(stage.encoder)
            return encode(prompts, stage.encoder, encoder=model_once).numpy()  # (N, D)

        msr.build(
            prepared,
            rule,
            folder,
            embed,
            source="prompt_text",
            fingerprint=model["encoder"],
            cfg=stage.prompts,
        )
        done = f"encoder {stage.encoder.model}"
    write_json(record, folder / VECTORS_RECORD)  # last: its presence marks the source done
    _line(f"{source} vectors: {done}", time.perf_counter() - start)
    return files


def run_scenarios(stage: ScenarioStage, prepared: Path, run_dir: Path, cache: str | None) -> ScenarioOutputs:
    """The stage: the scenario table, then each knowledge source's vectors (each skipped when up to date)."""
    rule = SC.resolve_rule(stage.rule)
    data_hash = read_meta(prepared / S.ITEMS_FILE)["data_hash"]
    table, table_hash = _table(rule, prepared, run_dir, data_hash)
    vectors = {
        source: _vectors(stage, source, rule, prepared, run_dir, table_hash, cache)
        for source in dict.fromkeys(stage.knowledge)
    }
    return ScenarioOutputs(table, table_hash, vectors)
