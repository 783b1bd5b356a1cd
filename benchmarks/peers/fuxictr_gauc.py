"""Time FuxiCTR's gAUC (`fuxictr.metrics.evaluate_metrics(..., ["gAUC"], group_id)`) on a predictions file.

Input: a parquet with columns user_id, label, score (the driver writes it from one model's test predictions).
Prints one JSON line: the value and the wall seconds of each repetition.

    /tmp/peer-venvs/fuxictr/bin/python benchmarks/peers/fuxictr_gauc.py --preds P --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import metadata
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preds", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    import numpy as np
    import pandas as pd
    from fuxictr.metrics import evaluate_metrics

    df = pd.read_parquet(a.preds)
    y = df["label"].to_numpy().astype(np.float64)
    s = df["score"].to_numpy().astype(np.float64)
    g = df["user_id"].to_numpy()
    values, seconds = [], []
    for _ in range(a.repeats):
        start = time.perf_counter()
        out = evaluate_metrics(y, s, ["gAUC"], group_id=g)
        seconds.append(time.perf_counter() - start)
        values.append(float(out["gAUC"]))
    print(
        json.dumps(
            {"gauc": values[0], "values": values, "seconds": seconds, "fuxictr": metadata.version("fuxictr")}
        )
    )


if __name__ == "__main__":
    main()
