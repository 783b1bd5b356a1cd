"""The `ctr` command: LightningCLI fit/validate/test/predict over `CTRDataModule` and any `CTRTask` model, plus
`ctr report` and `ctr run`.

The data module knows the cardinalities and codebook sizes; `link_arguments` hands its `spec` to the model, so no
config types them. Checkpointing and early stopping watch `val/gauc`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ctr.data import CTRDataModule
from ctr.module import CTRTask, PredictionWriter
from semid.errors import InputError

MONITOR = "val/gauc"


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
        parser.link_arguments("data.spec", "model.init_args.spec", apply_on="instantiate")
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
        subclass_mode_model=True,
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
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] == "report":
            from ctr.report import main as report_main

            report_main(argv[1:])
        elif argv and argv[0] == "run":
            from pipelines.run import main as run_main

            run_main(argv[1:])
        else:
            cli(None if args is None else argv)
    except InputError as err:
        print(f"ctr: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
