"""DeepCTR-Torch DeepFM on the exported split: train / predict throughput and test predictions (run in its venv).

Features: SparseFeat per single-valued field, VarLenSparseFeat(combiner="mean") for the multi-valued genre; the
same fields feed the linear and the DNN part (DeepCTR's DeepFM convention). l2_reg_* = 0, dropout 0, Adam lr 1e-3.
Training goes through `model.fit` (verbose=0: no per-batch sklearn metrics), prediction through `model.predict`.

    /tmp/peer-venvs/deepctr_torch/bin/python benchmarks/peers/deepctr_torch_run.py --data D --out O
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    C.setup(args)
    import torch
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DeepFM

    doc = C.vocab(args)
    train, test = C.read_split(args, "train"), C.read_split(args, "test")
    columns = [
        SparseFeat(n, vocabulary_size=doc["vocab"][n], embedding_dim=args.embed_dim) for n in doc["single"]
    ]
    columns += [
        VarLenSparseFeat(
            SparseFeat(n, vocabulary_size=doc["vocab"][n], embedding_dim=args.embed_dim),
            maxlen=w,
            combiner="mean",
        )
        for n, w in doc["multi"].items()
    ]

    def inputs(df, rows=None):
        x = {n: df[n].to_numpy().astype(np.int64) for n in doc["single"]}
        x.update({n: C.padded(df, n, w) for n, w in doc["multi"].items()})
        if rows is not None:
            x = {k: v[rows] for k, v in x.items()}
        return x

    def build():
        model = DeepFM(
            columns,
            columns,
            dnn_hidden_units=args.mlp,
            l2_reg_linear=0.0,
            l2_reg_embedding=0.0,
            l2_reg_dnn=0.0,
            dnn_dropout=0.0,
            seed=args.seed,
            task="binary",
            device="cpu",
        )
        model.compile(torch.optim.Adam(model.parameters(), lr=args.lr), "binary_crossentropy", metrics=None)
        return model

    x_train, y_train = inputs(train), train[doc["label"]].to_numpy().astype(np.float32)
    x_test = inputs(test)
    n = min(args.steps * args.batch_size, len(train))
    rows = np.random.default_rng(args.seed).permutation(len(train))[:n]
    x_steps, y_steps = {k: v[rows] for k, v in x_train.items()}, y_train[rows]

    warm = build()  # allocator, lazy imports
    warm.fit(
        {k: v[: 5 * args.batch_size] for k, v in x_steps.items()},
        y_steps[: 5 * args.batch_size],
        batch_size=args.batch_size,
        epochs=1,
        verbose=0,
    )
    train_runs, predict_runs = [], []
    for _ in range(args.repeats):
        model = build()
        sec, _ = C.timed(
            lambda m=model: m.fit(x_steps, y_steps, batch_size=args.batch_size, epochs=1, verbose=0)
        )
        train_runs.append(n / sec)
        sec, _ = C.timed(lambda m=model: m.predict(x_test, batch_size=args.eval_batch_size))
        predict_runs.append(len(test) / sec)

    model = build()
    quality_sec, _ = C.timed(
        lambda: model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    )
    scores = model.predict(x_test, batch_size=args.eval_batch_size)
    C.finish(
        args,
        peer="deepctr_torch",
        packages=("deepctr-torch", "scikit-learn"),
        train_runs=train_runs,
        predict_runs=predict_runs,
        test_scores=scores,
        n_test=len(test),
        quality_seconds=quality_sec,
        notes=["genre: VarLenSparseFeat combiner=mean", "fit() loss uses reduction='sum' (DeepCTR default)"],
    )


if __name__ == "__main__":
    main()
