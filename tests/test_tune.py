"""`ctr tune`: the search space per family, the pruning callback, and 3 trials on the synthetic prepared dataset
giving a YAML that `ctr fit --config` accepts, the same for the same seed."""

from __future__ import annotations

from pathlib import Path

import optuna
import polars as pl
import pytest
import yaml

from ctr import tune as space
from ctr.models.deepfm import DeepFM
from ctr.module import MONITOR_KEY, CTRTask
from pipelines.tune import tune
from semid.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run on one thread

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ctr"


@pytest.mark.parametrize("path", sorted(space.FAMILY_KNOBS))
def test_every_family_knob_is_a_constructor_argument(path):
    knobs = space.knobs_for(path, max_epochs=10)
    accepted = space.init_parameters(space._resolve(path))
    if issubclass(space._resolve(path), DeepFM):  # DeepFM's arguments, also where a subclass takes **deepfm
        assert {"embed_dim", "mlp_dims", "dropout", "batch_norm"} <= accepted
    assert all(k.name in accepted for k in knobs if k.key.startswith(space.NET_ARGS))
    keys = [k.key for k in knobs]
    assert len(set(keys)) == len(keys)  # one knob per key
    # the common knobs (and the epoch budget) are searched for every model
    assert {"model.lr", "model.embedding_l2", "model.weight_decay", "early_stopping.patience",
            "early_stopping.min_delta", "trainer.max_epochs"} <= set(keys)  # fmt: skip
    assert ("model.net.init_args.dropout" in keys) == ("dropout" in accepted)


def test_every_shipped_model_config_has_a_search_space():
    for path in CONFIGS.glob("*.yaml"):
        net = yaml.safe_load(path.read_text())["model"]["net"]["class_path"]
        space.knobs_for(net, max_epochs=5)  # raises if a family knob drifted from the constructor


def test_trial_config_sets_dotted_keys_without_touching_the_base():
    base = {"model": {"net": {"class_path": "ctr.models.deepfm.DeepFM", "init_args": {"mlp_dims": [8]}}}}
    knobs = space.knobs_for("ctr.models.deepfm.DeepFM", max_epochs=4)
    trial = optuna.trial.FixedTrial(
        {"model.lr": 0.01, "model.embedding_l2": 1e-6, "model.weight_decay": 1e-5, "early_stopping.patience": 2,
         "early_stopping.min_delta": 1e-4, "dropout": 0.2, "embed_dim": 8, "batch_norm": True,
         "trainer.max_epochs": 4}
    )  # fmt: skip
    config = space.trial_config(trial, base, knobs, "val/gauc_warm")
    assert config["model"]["net"]["init_args"] == {
        "mlp_dims": [8],
        "dropout": 0.2,
        "embed_dim": 8,
        "batch_norm": True,
    }
    assert config["model"]["lr"] == 0.01 and config["model"]["monitor"] == "val/gauc_warm"
    assert config["early_stopping"] == {"patience": 2, "min_delta": 1e-4} and config["trainer"] == {
        "max_epochs": 4
    }
    assert base["model"]["net"]["init_args"] == {"mlp_dims": [8]}


@pytest.mark.parametrize(
    ("config", "held"),
    [
        ("deepfm_bn.yaml", {"batch_norm": True}),
        ("akt_no_cold_dropout.yaml", {"p_cold": 0.0}),
        ("akt_no_orth.yaml", {"lambda_orth": 0.0}),
        ("akt_transfer_symmetric.yaml", {"use_transfer": True, "lambda_h2t": 0.01, "lambda_t2h": 0.01}),
    ],
)
def test_what_a_model_yaml_sets_is_held_while_tuning(config, held):
    """A model or an ablation is what its YAML sets: tuning searches the rest and never undoes it (it did: the
    tuned deepfm_bn came out with batch_norm false, identical to the tuned deepfm)."""
    base = yaml.safe_load((CONFIGS / config).read_text())
    net = base["model"]["net"]
    knobs = space.knobs_for(net["class_path"], max_epochs=4, fixed=net["init_args"].keys())
    assert not {k.name for k in knobs} & set(held)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    tuned = space.trial_config(trial, base, knobs, "val/auc")["model"]["net"]["init_args"]
    assert {k: tuned[k] for k in held} == held
    assert set(held) <= {
        k.name for k in space.knobs_for(net["class_path"], max_epochs=4)
    }  # searched otherwise


def test_config_params_reproduce_the_config_inside_the_search_space():
    knobs = (
        space.Knob("model.lr", 1e-4, 1e-2, log=True),
        space.Knob("model.embedding_l2", 1e-8, 1e-3, log=True),
        space.Knob("early_stopping.patience", 1, 4, integer=True),
        space.Knob("early_stopping.min_delta", choices=(0.0, 1e-4)),
        space.net_knob("embed_dim", choices=(8, 16, 32)),
        space.net_knob("batch_norm", choices=(False, True)),
        space.net_knob("dropout", 0.0, 0.5),
        space.Knob("trainer.max_epochs", 3, 4, integer=True),
    )
    resolved = {
        "model.lr": 1e-3,
        "model.embedding_l2": 0.0,  # below the log range: its floor
        "early_stopping.patience": 2,
        "early_stopping.min_delta": 0,  # an int 0 is the choice 0.0
        "model.net.init_args.embed_dim": 64,  # not a choice: sampled
        "model.net.init_args.batch_norm": 1,  # never read 1 as True
        "trainer.max_epochs": 10,  # above the budget: the budget
    }  # dropout unknown: sampled
    params = space.config_params(knobs, resolved.get)
    assert params == {
        "model.lr": 1e-3,
        "model.embedding_l2": 1e-8,
        "early_stopping.patience": 2,
        "early_stopping.min_delta": 0.0,
        "trainer.max_epochs": 4,
    }
    assert isinstance(params["early_stopping.min_delta"], float)


def test_unknown_network_is_an_input_error():
    with pytest.raises(InputError, match="cannot import"):
        space.knobs_for("ctr.models.nope.Nope", max_epochs=3)


def _common(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "trainer: {limit_train_batches: 3, enable_model_summary: false}\n"
        "data: {batch_size: 256, eval_batch_size: 4096}\n"
        "model: {monitor: val/gauc_warm}\n"  # trials are ranked on the common config's monitor
    )
    return path


def test_three_trials_write_a_yaml_ctr_fit_accepts_deterministically(prepared_dir, tmp_path):
    from pipelines.console import plain_argv
    from pipelines.train import cli

    common = _common(tmp_path)
    model = tmp_path / "deepfm_small.yaml"
    model.write_text(
        "model:\n  net:\n    class_path: ctr.models.deepfm.DeepFM\n    init_args: {mlp_dims: [8]}\n"
    )
    runs = []
    for run in ("a", "b"):
        out = tune(str(model), str(prepared_dir), str(tmp_path / run), common=[str(common)], n_trials=3,
                   seed=7, max_epochs=2)  # fmt: skip
        assert out == tmp_path / run / "tuned" / "deepfm_small.yaml"
        trials = pl.read_csv(out.with_name("deepfm_small_trials.csv"))
        runs.append((out.read_text(), trials))
    (yaml_a, trials_a), (yaml_b, trials_b) = runs
    assert yaml_a == yaml_b  # same seed: same search, same training, same winner
    assert trials_a.drop("seconds").equals(trials_b.drop("seconds"))
    assert trials_a.height == 3 and set(trials_a["state"]) == {"COMPLETE"}
    tuned = yaml.safe_load(yaml_a)
    best = trials_a.sort("value", descending=True).row(0, named=True)
    assert tuned["model"]["lr"] == pytest.approx(best["model.lr"])
    assert tuned["model"]["net"]["init_args"]["mlp_dims"] == [8]  # the base is kept
    assert not (tmp_path / "a" / "tuned" / ".deepfm_small.work").exists()
    assert len(set(trials_a["model.lr"])) == 3  # three different draws
    first = trials_a.row(0, named=True)  # trial 1 is the model's own config, moved into the search space
    assert first["model.lr"] == pytest.approx(1e-3) and first["dropout"] == pytest.approx(0.1)
    assert (
        first["embed_dim"] == 16 and str(first["batch_norm"]) == "False" and first["trainer.max_epochs"] == 2
    )
    assert first["early_stopping.patience"] == 2 and first["model.embedding_l2"] == pytest.approx(1e-8)

    with plain_argv():
        c = cli(
            ["--config", str(common), "--config", str(out), "--data.data_dir", str(prepared_dir),
             "--trainer.fast_dev_run", "true", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
             "--trainer.default_root_dir", str(tmp_path / "fit")],
            run=False,
        )  # fmt: skip
    assert isinstance(c.model, CTRTask) and c.model.lr == pytest.approx(tuned["model"]["lr"])
    assert c.model.monitor == "val/gauc_warm" and c.config.checkpoint.monitor == MONITOR_KEY
    assert c.config.early_stopping.patience == tuned["early_stopping"]["patience"]
    c.trainer.fit(c.model, datamodule=c.datamodule)
    assert c.trainer.state.finished


def test_pruning_callback_reports_and_stops():
    class _Trainer:
        sanity_checking = False
        current_epoch = 0
        should_stop = False
        callback_metrics = {MONITOR_KEY: 0.6}

    study = space.study(0, n_startup_trials=0, n_warmup_steps=0)
    for value in (0.9, 0.8):  # two finished trials with good values at epoch 0
        t = study.ask()
        t.report(value, 0)
        study.tell(t, value)
    trial = study.ask()
    cb = space.PruningCallback(trial)
    trainer = _Trainer()
    cb.on_validation_end(trainer, None)
    assert cb.best == 0.6 and cb.epochs == 1
    assert cb.pruned and trainer.should_stop  # 0.6 is below the median of the others at epoch 0
