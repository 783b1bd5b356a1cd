"""Export one prepared dataset split to the flat parquet every peer toolkit reads, with our own feature encoding.

The peers see exactly the tokens our models see (`ctr.data.load_tables`): per row the 1-based codes of user id, item
id, every user side feature and every item side feature (0 = padding), the multi-valued item feature both as a list
(`<name>`, for toolkits with a sequence feature) and as padded columns `<name>__0..M-1`, and the label. Written to
`<out>/{train,val,test}.parquet` plus `<out>/vocab.json` (vocabulary size per field, padding included).

`subset` cuts a prepared directory down to its first rows (the `--quick` wiring check) without touching the
original: items/users are copied as they are, train/val/test keep their first `train_rows` / `eval_rows` rows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from ctr.data import load_tables
from semid import schema as S

LABEL = "label"


def subset(prepared: Path, out: Path, *, train_rows: int, eval_rows: int) -> Path:
    """A copy of `prepared` whose splits keep their first rows (entity tables unchanged)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (S.ITEMS_FILE, S.USERS_FILE):
        shutil.copy2(prepared / name, out / name)
    for split in S.SPLITS:
        rows = train_rows if split == "train" else eval_rows
        pl.read_parquet(prepared / S.split_file(split)).head(rows).write_parquet(out / S.split_file(split))
    return out


def export(prepared: Path, out: Path) -> dict:
    """Write the peers' flat files for `prepared` into `out`; returns the vocab document."""
    tables = load_tables(prepared)
    users, items = tables.users.feats, tables.items.feats
    out.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {
        S.USER: int(tables.users.count.numel()) + 1,
        S.ITEM: int(tables.items.count.numel()) + 1,
    }
    single: list[str] = [S.USER, S.ITEM]
    multi: dict[str, int] = {}
    for feats in (users, items):
        for f, name in enumerate(feats.names):
            vocab[name] = int(feats.vocab[f])
            width = int((feats.tokens[:, f, :] > 0).sum(1).max())
            if width > 1:
                multi[name] = width
            else:
                single.append(name)
    rows = {}
    for split, arrays in tables.splits.items():
        user, item = arrays.user.numpy(), arrays.item.numpy()
        cols: dict[str, np.ndarray | pl.Series] = {S.USER: user + 1, S.ITEM: item + 1}
        for feats, ids in ((users, user), (items, item)):
            tok = feats.tokens.numpy()[ids]  # (N, F, M)
            for f, name in enumerate(feats.names):
                if name in multi:
                    pad = tok[:, f, : multi[name]]  # (N, M_f)
                    for j in range(pad.shape[1]):  # over list positions (a few), not rows
                        cols[f"{name}__{j}"] = pad[:, j]
                    cols[name] = _lists(pad)
                else:
                    cols[name] = tok[:, f, 0]
        cols[LABEL] = arrays.label.numpy().astype(np.int64)
        frame = pl.DataFrame(cols)
        frame.write_parquet(out / f"{split}.parquet")
        rows[split] = frame.height
    doc = {
        "vocab": vocab,
        "single": single,
        "multi": multi,
        "label": LABEL,
        "rows": rows,
        "source": str(prepared),
    }
    (out / "vocab.json").write_text(json.dumps(doc, indent=1))
    return doc


def _lists(pad: np.ndarray) -> pl.Series:
    """(N, M) padded tokens -> N lists of the non-zero tokens in order (vectorised: explode/group, no row loop)."""
    n, m = pad.shape
    long = pl.DataFrame({"row": np.repeat(np.arange(n), m), "tok": pad.reshape(-1).astype(np.int64)})
    lists = long.filter(pl.col("tok") > 0).group_by("row", maintain_order=True).agg(pl.col("tok"))
    full = pl.DataFrame({"row": np.arange(n)}).join(lists, on="row", how="left", maintain_order="left")
    return full["tok"].fill_null([])
