"""The search space of `ctr tune` (Optuna): the knobs every model is tuned on, the knobs of each model family
(declared here, in one place, and counted inside the same trial budget), the pruning callback, and the outputs
(the best config as a YAML `ctr fit --config` accepts, a trials table).

Fairness (issue 13): every model gets the same number of trials on the validation split, a TPE sampler seeded
the same way and the same pruner; a family's own knobs (AKT's loss weights, DCNv2's cross depth, ...) are drawn
from that budget, never from an extra one. Early stopping is part of the search (patience, min_delta, max_epochs),
so no fit is ended by one noisy epoch without the search having asked for it.

A knob names the config key it sets, as a dotted path into the `ctr fit` YAML ("model.lr",
"model.net.init_args.dropout", "early_stopping.patience", "trainer.max_epochs"); a trial's values become one
nested mapping (`trial_config`) that is both what the trial trains and what is written when it wins.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import optuna
import polars as pl

from ctr.module import MONITOR_KEY, class_path
from semid.errors import InputError

NET_ARGS = "model.net.init_args"


@dataclass(frozen=True)
class Knob:
    """One searched value: a float / int range (log-uniform when `log`) or a categorical `choices` tuple."""

    key: str  # dotted config path, e.g. "model.lr"
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    @property
    def name(self) -> str:
        """The Optuna parameter name: the last part of the key for network arguments, else the key."""
        return self.key.removeprefix(NET_ARGS + ".")

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


def net_knob(
    arg: str,
    low: float | None = None,
    high: float | None = None,
    *,
    log: bool = False,
    integer: bool = False,
    choices: tuple[Any, ...] | None = None,
) -> Knob:
    """A knob on the network's constructor argument `arg`."""
    return Knob(f"{NET_ARGS}.{arg}", low, high, log=log, integer=integer, choices=choices)


TASK_KNOBS: tuple[Knob, ...] = (
    Knob("model.lr", 1e-4, 1e-2, log=True),
    Knob("model.embedding_l2", 1e-8, 1e-3, log=True),
    Knob("model.weight_decay", 1e-7, 1e-2, log=True),
    Knob("early_stopping.patience", 1, 4, integer=True),
    Knob("early_stopping.min_delta", choices=(0.0, 1e-4, 5e-4, 1e-3)),
)
"""Tuned for every model."""

DROPOUT = net_knob("dropout", 0.0, 0.5)
"""Tuned for every network whose constructor takes `dropout`."""

EMBED_DIM = net_knob("embed_dim", choices=(8, 16, 32))

FAMILY_KNOBS: dict[str, tuple[Knob, ...]] = {
    "ctr.models.floor.Floor": (),
    "ctr.models.deepfm.DeepFM": (EMBED_DIM, net_knob("batch_norm", choices=(False, True))),
    "ctr.models.dcnv2.DCNv2": (
        EMBED_DIM,
        net_knob("cross_layers", 1, 4, integer=True),
        net_knob("batch_norm", choices=(False, True)),
    ),
    "ctr.models.sid_features.SIDFeatures": (EMBED_DIM, net_knob("batch_norm", choices=(False, True))),
    "ctr.models.din.DIN": (EMBED_DIM, net_knob("attention_softmax", choices=(False, True))),
    "ctr.models.poso.POSO": (EMBED_DIM, net_knob("bucket_dim", choices=(4, 8, 16))),
    "ctr.models.content_features.ContentFeatures": (EMBED_DIM, net_knob("batch_norm", choices=(False, True))),
    "ctr.models.akt.AKT": (
        EMBED_DIM,
        net_knob("use_transfer", choices=(False, True)),
        net_knob("lambda_h2t", 1e-3, 1.0, log=True),
        net_knob("lambda_t2h", 1e-4, 0.1, log=True),
        net_knob("lambda_orth", 1e-4, 0.1, log=True),
        net_knob("tau", 0.05, 1.0, log=True),
        net_knob("p_cold", 0.0, 0.3),
        net_knob("batch_norm", choices=(False, True)),
    ),
}
"""Each family's own knobs, drawn inside the same trial budget. A class not listed uses its closest listed base
class (a subclass of DeepFM gets DeepFM's knobs)."""


def _resolve(net_class_path: str) -> type:
    import importlib

    module, _, name = class_path(net_class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise InputError(
            f"cannot import the network class {net_class_path!r}",
            fix="model.net.class_path must name a class in ctr.models (e.g. ctr.models.deepfm.DeepFM)",
        ) from None


def init_parameters(cls: type) -> set[str]:
    """The init_args a network config of this class accepts, as the CLI reads them: jsonargparse's view of the
    constructor, which follows `**kwargs` handed to the parent class or to a layer (DIN's `**deepfm`, AKT's
    `**embedding`)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(cls, "net", skip={"spec"})
    return {a.dest.split(".", 1)[1] for a in parser._actions if a.dest.startswith("net.")}


def knobs_for(
    net_class_path: str, max_epochs: int, *, min_epochs: int = 3, fixed: Iterable[str] = ()
) -> tuple[Knob, ...]:
    """Every knob a model of this class is tuned on: the common ones, dropout if it takes one, its family's, and
    the epoch budget (max_epochs drawn in [min(min_epochs, max_epochs), max_epochs]).

    `fixed`: network arguments the model YAML sets itself (its `init_args`) -- what makes it that model or that
    ablation (deepfm_bn's batch_norm: true, akt_no_orth's lambda_orth: 0) -- are held, never searched."""
    cls = _resolve(net_class_path)
    family = next((FAMILY_KNOBS[class_path(c)] for c in cls.__mro__ if class_path(c) in FAMILY_KNOBS), ())
    accepted = init_parameters(cls)
    held = set(fixed)
    knobs = [
        k
        for k in (*TASK_KNOBS, *([DROPOUT] if "dropout" in accepted else []), *family)
        if not (k.key.startswith(NET_ARGS) and k.name in held)
    ]
    unknown = [k.name for k in knobs if k.key.startswith(NET_ARGS) and k.name not in accepted]
    if unknown:  # FAMILY_KNOBS drifted from the constructor: a test checks every family
        raise InputError(
            f"{class_path(cls)} takes no argument(s) {unknown} that ctr.tune.FAMILY_KNOBS searches",
            fix="update FAMILY_KNOBS in ctr/tune.py to the network's constructor",
        )
    if max_epochs < 1:
        raise InputError(f"max_epochs={max_epochs}", fix="give tune a max_epochs of at least 1")
    knobs.append(Knob("trainer.max_epochs", min(min_epochs, max_epochs), max_epochs, integer=True))
    return tuple(knobs)


def _set(config: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"the config's {part!r} is not a mapping", fix=f"fix the config key {key}")
    node[last] = value


def config_with(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """`base` (a model YAML as a mapping) with each dotted key of `values` set; base is not modified."""
    config = copy.deepcopy(dict(base))
    for key, value in values.items():
        _set(config, key, value)
    return config


def trial_config(
    trial: optuna.Trial, base: Mapping[str, Any], knobs: Sequence[Knob], monitor: str
) -> dict[str, Any]:
    """The model config one trial trains: base + a value per knob + the monitored metric."""
    values = {k.key: k.suggest(trial) for k in knobs}
    values["model.monitor"] = monitor
    return config_with(base, values)


def config_params(knobs: Sequence[Knob], value_of: Callable[[str], Any]) -> dict[str, Any]:
    """The parameters that reproduce the model's own configuration (what `ctr fit` trains untuned), for the first
    trial: `value_of(key)` is the resolved value of a knob's config key (the common configs, the model YAML, then
    the constructor's and the CLI's defaults).

    A value outside a knob's range is moved to the nearest value the search can draw (an `embedding_l2` of 0 becomes
    the range's 1e-8; a `max_epochs` above the tuning budget becomes that budget); a knob whose value is unknown or
    not among its choices is left out, and that trial samples it."""
    params: dict[str, Any] = {}
    for k in knobs:
        value = value_of(k.key)
        if value is None or isinstance(value, (dict, list)):
            continue
        if k.choices is not None:
            same = [c for c in k.choices if c == value and isinstance(c, bool) == isinstance(value, bool)]
            if same:  # the choice itself (0 -> 0.0), never True for 1
                params[k.name] = same[0]
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        value = min(max(value, k.low), k.high)
        params[k.name] = int(round(value)) if k.integer else float(value)
    return params


def study(seed: int, *, n_startup_trials: int = 5, n_warmup_steps: int = 1) -> optuna.Study:
    """A maximising study: TPESampler(seed) and a MedianPruner (no pruning before `n_startup_trials` finished
    trials, nor before epoch `n_warmup_steps`)."""
    return optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps),
    )


class PruningCallback(L.Callback):
    """Reports the monitored validation number after every validation epoch to the trial and stops the fit when
    the pruner says so (`pruned` is then True: raise `optuna.TrialPruned` after `fit` returns, as Lightning would
    otherwise treat it as a crash). Keeps the best value seen, the trial's objective."""

    def __init__(self, trial: optuna.Trial, monitor: str = MONITOR_KEY) -> None:
        self.trial, self.monitor = trial, monitor
        self.best = -math.inf
        self.pruned = False
        self.epochs = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        self.epochs = trainer.current_epoch + 1
        if math.isfinite(value):
            self.best = max(self.best, value)
        self.trial.report(value, trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


def trials_frame(finished: optuna.Study) -> pl.DataFrame:
    """One row per trial: number, state, value, epochs and every parameter (a column per knob)."""
    rows = []
    for t in finished.trials:
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": t.value if t.value is not None else math.nan,
                "epochs": int(t.user_attrs.get("epochs", 0)),
                "seconds": t.duration.total_seconds() if t.duration is not None else math.nan,
                **{k: str(v) if isinstance(v, bool) else v for k, v in t.params.items()},
            }
        )
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()
