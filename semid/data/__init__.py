"""Prepared datasets: read raw interaction/item/user files, validate, label, split by time, bucket by activity.

One job per file:

- `config`: the options (`PrepareConfig` = `SplitConfig` + `BucketConfig` + `NegativeConfig`) and `RawFiles`.
- `readers`: reading parquet/CSV/TSV/RecBole files, the per-column input checks, the interactions and their labels.
- `text`: item/user content as expressions (rendered text, side-feature tokens, image paths under the image root).
- `entities`: the items and users tables (dense ids, text, features).
- `split`: temporal / leave-last-out splits, the item cold-start hold-out, the split checks.
- `activity`: activity buckets (percentile `bucket`, absolute `abs_bucket`).
- `prepared`: the stage itself: `build`, `write`, `load`, `fingerprint`.

What is refused (InputError naming file, column, fix): a missing or directory input (before anything is hashed),
null/NaN/inf ratings (NaN would compare as label 1), timestamps with a fractional part (never truncated), a split
without both label classes (its AUC would be NaN), image paths outside the image root. A val/test split on which
GAUC would rest on no user is a warning. Long-tail protocol options: item cold-start (`SplitConfig.cold_items`),
absolute tail buckets (`BucketConfig.*_tail_below`, column `abs_bucket`), sampled negatives for positive-only data
(`NegativeConfig`, used by `semid.amazon`).
"""

from __future__ import annotations

from semid.data.activity import ABS_BUCKET, ABS_BUCKETS, activity, add_activity, bucket_meta
from semid.data.config import BucketConfig, NegativeConfig, PrepareConfig, RawFiles, SplitConfig
from semid.data.entities import items_table, users_table
from semid.data.prepared import Prepared, build, fingerprint, load, write, write_tables
from semid.data.readers import (
    RawInteractions,
    check_input_file,
    dense_ids,
    read_interactions,
    read_raw,
)
from semid.data.split import (
    check_splits,
    gauc_user_counts,
    hold_out_items,
    leave_last_out,
    split_interactions,
)
from semid.data.text import render_text, resolve_image_paths
from semid.io import sha256_file

__all__ = [
    "ABS_BUCKET",
    "ABS_BUCKETS",
    "BucketConfig",
    "NegativeConfig",
    "PrepareConfig",
    "Prepared",
    "RawFiles",
    "RawInteractions",
    "SplitConfig",
    "activity",
    "add_activity",
    "bucket_meta",
    "build",
    "check_input_file",
    "check_splits",
    "dense_ids",
    "fingerprint",
    "gauc_user_counts",
    "hold_out_items",
    "items_table",
    "leave_last_out",
    "load",
    "read_interactions",
    "read_raw",
    "render_text",
    "resolve_image_paths",
    "sha256_file",
    "split_interactions",
    "users_table",
    "write",
    "write_tables",
]
