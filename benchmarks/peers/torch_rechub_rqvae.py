"""torch-rechub's RQ-VAE semantic-ID builder on given item embeddings: build time and codes (run in its venv).

`RQVAEModel` (MLP encoder -> residual VQ with sklearn k-means init, Sinkhorn on the last level -> MLP decoder)
trained by rechub's RQ-VAE `Trainer`, then `generate_semantic_ids` (re-assigns colliding items with Sinkhorn for up
to 20 rounds). Architecture, codebook sizes, epochs, batch size and lr are the ones our builder uses (passed in).
Writes `<out>/codes.npz` with the codes before (`raw`) and after (`final`) rechub's collision handling, and prints
one JSON line with the timings.

    /tmp/peer-venvs/torch_rechub/bin/python benchmarks/peers/torch_rechub_rqvae.py --emb E.npy --out O --sizes 128,128,128
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import tempfile
import time
from importlib import metadata
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--emb", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", type=str, required=True)
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--hidden", type=str, default="256,128")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from torch_rechub.models.generative import RQVAEModel
    from torch_rechub.trainers.rqvae_trainer import Trainer

    torch.set_num_threads(a.threads)
    sizes = [int(s) for s in a.sizes.split(",")]
    x = torch.from_numpy(np.load(a.emb)).float()  # (N, D)
    a.out.mkdir(parents=True, exist_ok=True)

    def build() -> tuple[float, float, np.ndarray, np.ndarray]:
        torch.manual_seed(a.seed)
        np.random.seed(a.seed)
        model = RQVAEModel(
            in_dim=x.shape[1],
            num_emb_list=sizes,
            e_dim=a.latent_dim,
            layers=[int(h) for h in a.hidden.split(",")],
            kmeans_init=True,
            sk_epsilons=[0.0] * (len(sizes) - 1) + [0.003],
        )
        trainer = Trainer(
            model,
            optimizer_params={"lr": a.lr, "weight_decay": 0.0},
            n_epoch=a.epochs,
            device="cpu",
            model_path=tempfile.mkdtemp(prefix="rechub-rqvae-"),
            eval_step=a.epochs + 1,  # no per-epoch collision evaluation / checkpointing
        )
        loader = DataLoader(x, batch_size=a.batch_size, shuffle=True)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints every collision group
            trainer.fit(loader)
            train_s = time.perf_counter() - start
            model.eval()
            raw = model.get_indices(x).numpy()  # (N, L) nearest codes, no collision handling
            ids = model.generate_semantic_ids(x, DataLoader(x, batch_size=1024, shuffle=False), device="cpu")
        total_s = time.perf_counter() - start
        final = np.array([[int(re.sub(r"\D", "", t)) for t in ids[i]] for i in range(len(ids))])  # (N, L)
        return train_s, total_s, raw, final

    runs = [build() for _ in range(a.repeats)]
    np.savez(a.out / "codes.npz", raw=runs[-1][2], final=runs[-1][3])
    print(
        json.dumps(
            {
                "train_seconds": [r[0] for r in runs],
                "build_seconds": [r[1] for r in runs],
                "build_seconds_median": statistics.median(r[1] for r in runs),
                "codes": str(a.out / "codes.npz"),
                "sizes": sizes,
                "torch-rechub": metadata.version("torch-rechub"),
                "scikit-learn": metadata.version("scikit-learn"),
            }
        )
    )


if __name__ == "__main__":
    main()
