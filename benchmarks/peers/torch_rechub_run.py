"""torch-rechub DeepFM on the exported split: train / predict throughput and test predictions (run in its venv).

Features: SparseFeature per single-valued field, SequenceFeature(pooling="mean", padding_idx=0) for genre; the same
features feed the deep and the FM part. Data through rechub's `DataGenerator` loaders, training through
`CTRTrainer.train_one_epoch` (the throughput loader holds `steps` batches), prediction through `CTRTrainer.predict`.
Adam lr 1e-3, weight_decay 0, no regularisation, MLP dropout 0 (rechub's MLP has BatchNorm after every layer).

    /tmp/peer-venvs/torch_rechub/bin/python benchmarks/peers/torch_rechub_run.py --data D --out O
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    import torch
    from torch.utils.data import DataLoader
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.models.ranking import DeepFM
    from torch_rechub.trainers import CTRTrainer
    from torch_rechub.utils.data import DataGenerator, TorchDataset

    doc = C.vocab(args)
    train, val, test = (C.read_split(args, s) for s in ("train", "val", "test"))

    def features():
        """Fresh feature objects: a rechub Feature caches the embedding table it creates (get_embedding_layer), so
        features shared between two models share their tables, and a model built after the warm-up and the
        throughput runs would start from their trained embeddings."""
        out = [SparseFeature(n, vocab_size=doc["vocab"][n], embed_dim=args.embed_dim) for n in doc["single"]]
        out += [
            SequenceFeature(
                n, vocab_size=doc["vocab"][n], embed_dim=args.embed_dim, pooling="mean", padding_idx=0
            )
            for n in doc["multi"]
        ]
        return out

    def inputs(df):
        x = {n: df[n].to_numpy().astype(np.int64) for n in doc["single"]}
        x.update({n: C.padded(df, n, w) for n, w in doc["multi"].items()})
        return x, df[doc["label"]].to_numpy().astype(np.float32)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = inputs(train), inputs(val), inputs(test)
    workdir = Path(tempfile.mkdtemp(prefix="rechub-"))

    def build():
        torch.manual_seed(args.seed)
        fields = features()
        model = DeepFM(
            deep_features=fields,
            fm_features=fields,
            mlp_params={"dims": list(args.mlp), "dropout": 0.0, "activation": "relu"},
        )
        return CTRTrainer(
            model,
            optimizer_params={"lr": args.lr, "weight_decay": 0.0},
            n_epoch=args.epochs,
            earlystop_patience=args.epochs + 1,
            device="cpu",
            model_path=str(workdir),
        )

    n = min(args.steps * args.batch_size, len(train))
    rows = np.random.default_rng(args.seed).permutation(len(train))[:n]
    steps_gen = DataGenerator({k: v[rows] for k, v in x_train.items()}, y_train[rows])
    steps_loader, _, _ = steps_gen.generate_dataloader(
        x_val, y_val, x_test, y_test, batch_size=args.batch_size
    )
    test_loader = DataLoader(TorchDataset(x_test, y_test), batch_size=args.eval_batch_size, shuffle=False)

    warm = build()
    warm.train_one_epoch(list(steps_loader)[:5])
    train_runs, predict_runs = [], []
    for _ in range(args.repeats):
        trainer = build()
        sec, _ = C.timed(lambda t=trainer: t.train_one_epoch(steps_loader))
        train_runs.append(n / sec)
        sec, _ = C.timed(lambda t=trainer: t.predict(t.model, test_loader))
        predict_runs.append(len(test) / sec)

    trainer = build()
    train_loader, _, _ = DataGenerator(x_train, y_train).generate_dataloader(
        x_val, y_val, x_test, y_test, batch_size=args.batch_size
    )
    quality_sec, _ = C.timed(lambda: trainer.fit(train_loader))  # no val loader: fixed epochs, no early stop
    scores = np.asarray(trainer.predict(trainer.model, test_loader))
    C.finish(
        args,
        peer="torch_rechub",
        packages=("torch-rechub", "scikit-learn"),
        train_runs=train_runs,
        predict_runs=predict_runs,
        test_scores=scores,
        n_test=len(test),
        quality_seconds=quality_sec,
        notes=[
            "genre: SequenceFeature pooling=mean",
            "rechub MLP: Linear-BatchNorm-ReLU per layer",
            "fresh Feature objects per model (a rechub Feature caches its embedding table)",
        ],
    )


if __name__ == "__main__":
    main()
