"""DDP on 2 CPU processes (gloo): the distributed test GAUC equals a single-process GAUC of the same predictions."""

from __future__ import annotations

import csv
import subprocess
import sys

import polars as pl
import torch

from ctr.metrics import auc, gauc
from pipelines.train import cli
from semid import schema as S


def test_ddp_test_metrics_equal_single_process(prepared_dir, tmp_path):
    common = [
        "--model.net", "ctr.models.deepfm.DeepFM",
        "--model.net.embed_dim", "8",
        "--data.data_dir", str(prepared_dir),
        "--data.eval_batch_size", "128",  # several eval batches, split unevenly over the two ranks
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    c = cli(
        [*common, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "fit")], run=False
    )
    c.trainer.fit(c.model, datamodule=c.datamodule)
    ckpt = tmp_path / "model.ckpt"
    c.trainer.save_checkpoint(ckpt)

    # single process: predictions of the checkpoint on the test split, scored with the functional metrics
    single = tmp_path / "single.parquet"
    s = cli(
        [*common, "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "single")],
        run=False,
    )
    from ctr.module import PredictionWriter

    s.trainer.callbacks.append(PredictionWriter(single))
    s.trainer.predict(s.model, datamodule=s.datamodule, ckpt_path=str(ckpt), return_predictions=False)
    pred = pl.read_parquet(single)
    test = pl.read_parquet(prepared_dir / S.split_file("test"))
    assert pred.height == test.height
    p, y, u = (torch.tensor(pred[c].to_numpy()) for c in (S.SCORE, S.LABEL, S.USER))
    want_gauc, want_auc = gauc(p.double(), y, u), auc(p.double(), y)

    # two processes, gloo: the CLI relaunches itself per rank
    root = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "pipelines.train", "test", *common, "--ckpt_path", str(ckpt)]
    cmd += ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    cmd += ["--trainer.default_root_dir", str(root)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(next(root.rglob("metrics.csv")).open()))
    logged = {k: float(v) for r in rows for k, v in r.items() if k.startswith("test/") and v != ""}
    assert abs(logged["test/gauc"] - want_gauc) < 1e-5
    assert abs(logged["test/auc"] - want_auc) < 1e-5
    assert int(logged["test/n"]) == test.height  # every sample once: disjoint shards, no padding duplicates
