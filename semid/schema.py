"""Column names, parquet schemas and metadata keys of every artifact the pipeline passes between stages.

One module so that a stage never spells a column name twice: readers, writers and tests import from here.
"""

from __future__ import annotations

import polars as pl

SCHEMA_VERSION = 1

# -- ids -------------------------------------------------------------------------------------------------
USER = "user_id"  # dense Int32 code, 0..n_users-1, assigned in order of the raw id
ITEM = "item_id"  # dense Int32 code, 0..n_items-1, assigned in order of the raw id
RAW_USER = "raw_user_id"  # the id as the source data spells it
RAW_ITEM = "raw_item_id"

# -- interactions ----------------------------------------------------------------------------------------
LABEL = "label"
TIMESTAMP = "timestamp"
RATING = "rating"

# -- content ---------------------------------------------------------------------------------------------
TEXT = "text"
IMAGE_PATH = "image_path"

# -- activity (computed on train only) -------------------------------------------------------------------
TRAIN_COUNT = "train_count"
BUCKET = "bucket"
BUCKETS: tuple[str, ...] = ("head", "torso", "tail", "cold")

SPLITS: tuple[str, ...] = ("train", "val", "test")

INTERACTIONS = pl.Schema(
    {USER: pl.Int32, ITEM: pl.Int32, LABEL: pl.Int8, TIMESTAMP: pl.Int64, RATING: pl.Float32}
)
"""train/val/test parquet. `rating` is null where the source has none."""

ITEMS_BASE = pl.Schema(
    {ITEM: pl.Int32, RAW_ITEM: pl.String, TEXT: pl.String, TRAIN_COUNT: pl.Int64, BUCKET: pl.String}
)
"""items.parquet always has these; each side feature adds one List(String) column, an optional image_path a String."""

USERS_BASE = pl.Schema(
    {USER: pl.Int32, RAW_USER: pl.String, TEXT: pl.String, TRAIN_COUNT: pl.Int64, BUCKET: pl.String}
)
"""users.parquet always has these; each side feature adds one List(String) column."""

FEATURE_DTYPE = pl.List(pl.String)
"""Side features are stored as lists of raw tokens (a single-valued feature is a list of one)."""

# -- files of a prepared dataset directory ---------------------------------------------------------------
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"


def split_file(split: str) -> str:
    return f"{split}.parquet"


# -- parquet key-value metadata --------------------------------------------------------------------------
META_KEY = "semid"
"""Every artifact stores one JSON document under this key (see semid.io.read_meta / write_parquet)."""


# -- semantic-ID tables (item_sids.parquet / user_sids.parquet) ------------------------------------------
SID_PREFIX = "sid_"
SID_DEDUP = "sid_dedup"
"""Dedup suffix: 0 for the first entity (by id) holding a code tuple, 1 for the second, ... so that
(sid_0, ..., sid_{L-1}, sid_dedup) is unique per entity."""
ITEM_SIDS_FILE = "item_sids.parquet"
USER_SIDS_FILE = "user_sids.parquet"


def sid_column(level: int) -> str:
    return f"{SID_PREFIX}{level}"


def sid_schema(key: str, levels: int) -> pl.Schema:
    """Schema of an ID table: the entity key (ITEM or USER), one Int32 column per level, then the suffix."""
    return pl.Schema({key: pl.Int32, **{sid_column(i): pl.Int32 for i in range(levels)}, SID_DEDUP: pl.Int32})


# -- content embeddings (cache and encoder output) -------------------------------------------------------
EMBEDDING = "embedding"  # List(Float32) / Array(Float32, dim), L2-normalised
TEXT_HASH = "text_hash"

# -- predictions (ctr predict -> report) -----------------------------------------------------------------
SCORE = "score"  # predicted click probability
ITEM_BUCKET = "item_bucket"
USER_BUCKET = "user_bucket"
PREDICTIONS = pl.Schema(
    {
        USER: pl.Int32,
        ITEM: pl.Int32,
        LABEL: pl.Int8,
        SCORE: pl.Float32,
        ITEM_BUCKET: pl.String,
        USER_BUCKET: pl.String,
    }
)
PREDICTIONS_FILE = "predictions.parquet"
VAL_PREDICTIONS_FILE = "val_predictions.parquet"
"""The same schema on the validation split, from the checkpoint that predicted the test split (the fit's best; for a
refit, its selection fit's): what the report fits each (model, seed)'s calibration map on (ctr.calibration)."""


# -- run directory layout (semid run; read by the report) ------------------------------------------------
PREPARED_DIR = "prepared"  # <run>/prepared: a prepared dataset directory
SEMIDS_DIR = "semids"  # <run>/semids: item_sids.parquet, user_sids.parquet and what `semid assign` needs
MODELS_DIR = "models"  # <run>/models/<model>/seed<k>/
REPORT_DIR = "report"  # <run>/report: report.md, report.json, plots
METRICS_FILE = "metrics.json"  # <run>/models/<model>/seed<k>/metrics.json, written last: marks the fit done
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"
FIT_CONFIG_DIR = "config"
"""<run>/models/<model>/seed<k>/config/: the `ctr fit` YAMLs `semid run` froze for a fit, applied in name order (the
report reads the fit's model.monitor from them)."""
ALIGN_STATE_FILE = "aligned_encoder.pt"  # <semids>/aligned_encoder.pt
ITEM_RQVAE_FILE = "item_rqvae.pt"
USER_RQVAE_FILE = "user_rqvae.pt"
ITEM_EMB_FILE = "item_embeddings.parquet"
USER_EMB_FILE = "user_embeddings.parquet"
OUTPUT_MARKER = ".semid-output.json"
"""Written into every output directory a command owns ({"command": ..., "version": ...}); a command replaces or
deletes a directory only if this marker says the same command wrote it (see semid.io)."""


def seed_dir_name(seed: int) -> str:
    return f"seed{seed}"
