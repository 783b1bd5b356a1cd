"""CTR data: a prepared dataset directory plus semantic-ID tables -> shuffled, rank-sharded `Batch`es.

Everything is read once (polars, vectorised) into tensors: per split the sample arrays (user, item, label, history
end offset), per entity the feature tokens, semantic IDs, train counts and activity buckets. A batch is a handful
of index gathers from those tensors.

One job per file:

- `readers`: read and validate each input file (entity and split tables, ID tables, content vectors, scenarios,
  the source-domain history); one InputError naming file, column and fix.
- `history`: a sample's history without leakage (last positives strictly before it, from `HISTORY_SOURCES`).
- `arrays`: the tensor containers (`Entities`, `SplitArrays`, `Tables`, ...).
- `tables`: `load_tables`, which composes the readers into `Tables`.
- `loader`: `SplitData`, `IndexBatches` (rank-sharded sampler) and `CTRDataModule`.

Content vectors (optional, `item_content` / `user_content`): the frozen aligned vectors `semid build` writes.
Scenarios (optional): a `scenarios.parquet` gives every user or item one scenario (`Batch.scenario`).
Source-domain history (optional): the Amazon reader's source_history.parquet joins every history source set,
typed in `Batch.hist_type` (the "naive source history" arm of the cross-domain comparison).
Imagined behaviours (optional): `semid imagine`'s imagined.parquet, each user's imagined items and confidences as
a separate, flagged view (`Batch.imag_item` / `Batch.imag_conf`).
"""

from __future__ import annotations

from ctr.data.arrays import (
    Entities,
    Features,
    ImaginedItems,
    ScenarioCodes,
    SemanticIds,
    SplitArrays,
    Tables,
)
from ctr.data.history import (
    HISTORY_SOURCES,
    History,
    build_history,
    gather_history,
    history_end,
    history_slots,
)
from ctr.data.loader import CTRDataModule, IndexBatches, Split, SplitData, distinct_history_content
from ctr.data.readers import (
    SOURCE_HISTORY_NAME,
    feature_tokens,
    read_content,
    read_imagined,
    read_scenarios,
    read_sids,
    read_source_history,
)
from ctr.data.tables import load_tables

__all__ = [
    "HISTORY_SOURCES",
    "SOURCE_HISTORY_NAME",
    "CTRDataModule",
    "Entities",
    "Features",
    "History",
    "ImaginedItems",
    "IndexBatches",
    "ScenarioCodes",
    "SemanticIds",
    "Split",
    "SplitArrays",
    "SplitData",
    "Tables",
    "build_history",
    "distinct_history_content",
    "feature_tokens",
    "gather_history",
    "history_end",
    "history_slots",
    "load_tables",
    "read_content",
    "read_imagined",
    "read_scenarios",
    "read_sids",
    "read_source_history",
]
