"""The `ctr fit|validate|test|predict` LightningCLI: a `CTRTask` (any network from `ctr.models`) over `CTRDataModule`.

The model section names the network and the training settings:
    model: {net: {class_path: ctr.models.akt.AKT, init_args: {embed_dim: 16}}, lr: 0.001}
The data module knows the cardinalities and codebook sizes; `link_arguments` hands its `spec` to the task, which
builds the network from it, so no config types them. Checkpointing and early stopping watch `val/monitor`: the
validation number `model.monitor` names (val/gauc, val/gauc_warm or val/auc; val/auc where GAUC is undefined).
`--ckpt_path` must hold a checkpoint of the configured network class (else one clear error, not a silent swap).
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ctr.data import CTRDataModule
from ctr.module import MONITOR_KEY, CTRTask, PredictionWriter, class_path
from semid.errors import InputError

MONITOR = MONITOR_KEY


def default_loggers(save_dir: str) -> list[dict[str, Any]]:
    """CSV always; TensorBoard too when it is installed."""
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": save_dir}}]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(
            {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": save_dir}}
        )
    return loggers


class CTRCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.spec", "model.spec", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {"early_stopping.monitor": MONITOR, "early_stopping.mode": "max", "early_stopping.patience": 2}
        )
        parser.add_argument(
            "--predictions_out",
            type=str | None,
            default=None,
            help="predict: where to write the predictions parquet (default: <trainer.default_root_dir>/predictions.parquet)",
        )

    def _parse_ckpt_path(self) -> None:
        """Check `--ckpt_path` before anything is built: a readable checkpoint (weights_only) of a CTRTask whose
        network class is the configured one; then its network arguments replace the config's (as LightningCLI
        does), so the weights fit. Replaces LightningCLI's version, which silently swaps in the checkpoint's model.
        """
        sub = self.config.get("subcommand")
        if not sub:
            return
        path = self.config[sub].get("ckpt_path")
        if not path or path in ("last", "best", "hpc", "registry"):
            return
        fix = "pass a checkpoint written by `ctr fit` (or `semid run`) for this model"
        if not Path(path).is_file():
            raise InputError("checkpoint not found", file=path, fix=fix)
        try:
            ckpt = torch.load(path, weights_only=True, map_location="cpu")
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"not a loadable checkpoint ({first[:200]})", file=path, fix=fix) from None
        hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
        stored = hparams.get("net") if isinstance(hparams, dict) else None
        if not isinstance(stored, dict) or "class_path" not in stored:
            raise InputError(
                "not a CTRTask checkpoint (no network class in its hyper-parameters)",
                file=path,
                fix=fix + "; checkpoints from before networks became plain modules must be retrained",
            )
        configured = class_path(self.config[sub].model.net.class_path)
        if class_path(stored["class_path"]) != configured:
            raise InputError(
                f"the checkpoint holds a {stored['class_path']} network, the config builds {configured}",
                file=path,
                fix="pass the model config the checkpoint was trained with (configs/ctr/<model>.yaml), "
                "or a checkpoint of this model",
            )
        net = {"class_path": stored["class_path"], "init_args": stored.get("init_args") or {}}
        self.config = self.parser.parse_object({sub: {"model": {"net": net}}}, self.config)

    def before_instantiate_classes(self) -> None:
        # Relative logger dirs (the default "lightning_logs") go under trainer.default_root_dir, like checkpoints.
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        root = cfg.trainer.default_root_dir
        loggers = cfg.trainer.logger if isinstance(cfg.trainer.logger, list) else []
        for logger in loggers:
            save_dir = getattr(getattr(logger, "init_args", None), "save_dir", None)
            if root and isinstance(save_dir, str) and not Path(save_dir).is_absolute():
                logger.init_args.save_dir = str(Path(root) / save_dir)

    def before_predict(self) -> None:
        sub = self.config[self.subcommand]
        out = sub.get("predictions_out") or str(Path(self.trainer.default_root_dir) / "predictions.parquet")
        self.trainer.callbacks.append(PredictionWriter(out))


def cli(args: list[str] | None = None, *, run: bool = True) -> CTRCLI:
    return CTRCLI(
        CTRTask,
        CTRDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "use_distributed_sampler": False,  # CTRDataModule shards by rank itself (disjoint eval shards)
            "max_epochs": 20,
            "logger": default_loggers("lightning_logs"),
        },
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """`python -m pipelines.train fit|validate|test|predict ...`. The `ctr` console command (with `report`, `run`,
    `--debug` and the checkpoint check) is `pipelines.cli.ctr_main`; this module imports no other pipeline."""
    from semid.errors import user_errors

    with user_errors("ctr"):
        cli(args)


if __name__ == "__main__":
    main()
