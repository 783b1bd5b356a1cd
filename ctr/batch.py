"""The one batch type every CTR network consumes, what a network returns, and the data facts (cardinalities)
networks are built from.

Shapes: B = batch size, L_i / L_u = semantic-ID levels of items / users (the dedup suffix not included),
F_i / F_u = number of item / user side features, M_i / M_u = max tokens of one multi-valued feature,
H = history length, D_i / D_u = dimension of the frozen content vectors (0 when none are loaded). Token 0 is
padding in every feature vocabulary and in the history (real item ids are shifted by one there), so
`nn.EmbeddingBag(padding_idx=0)` / masks work directly. Optional fields (content vectors, scenario, history event
type, imagined behaviours) are empty tensors when the data module was not asked for them; a network that needs one
checks `numel()`. K = imagined behaviours per user (`semid imagine`'s imagined.parquet, a flagged view kept apart
from the real history: the model decides how far to trust it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

NO_CONTENT = torch.zeros(0)  # the content fields of a Batch built without content vectors (nothing is read)
NO_CODES = torch.zeros(0, dtype=torch.int64)  # scenario / hist_type of a Batch built without them

HIST_TARGET, HIST_SOURCE = 0, 1
"""`Batch.hist_type` values: an event of the target domain (the split's own data) / of the source domain (a merged
cross-domain history, e.g. Amazon Food events before a Kitchen sample)."""


class Batch(NamedTuple):
    user: Tensor  # (B,) int64 dense user id, 0..n_users-1
    item: Tensor  # (B,) int64 dense item id, 0..n_items-1
    label: Tensor  # (B,) float32 in {0, 1}
    user_sid: Tensor  # (B, L_u) int64 semantic-ID code per level, each in 0..user_sid_sizes[l]-1
    item_sid: Tensor  # (B, L_i) int64
    user_count: Tensor  # (B,) float32 number of train interactions of the user (0 = cold)
    item_count: Tensor  # (B,) float32 number of train interactions of the item (0 = cold)
    user_feats: Tensor  # (B, F_u, M_u) int64 per-feature token ids, 0 = padding
    item_feats: Tensor  # (B, F_i, M_i) int64
    hist_item: Tensor  # (B, H) int64 item id + 1 of the user's last H positives before the sample, 0 = pad
    hist_item_sid: (
        Tensor  # (B, H, L_i) int64 semantic IDs of those items (0 where padded; mask with hist_item > 0)
    )
    hist_item_count: Tensor  # (B, H) float32 train interactions of each history item (0 where padded)
    user_bucket: Tensor  # (B,) int64 index into semid.schema.BUCKETS (head, torso, tail, cold) of the user
    item_bucket: Tensor  # (B,) int64 index into BUCKETS of the item
    user_content: Tensor = NO_CONTENT  # (B, D_u) float32 frozen aligned content vector of the user, or empty
    item_content: Tensor = NO_CONTENT  # (B, D_i) float32 frozen aligned content vector of the item, or empty
    scenario: Tensor = NO_CODES  # (B,) int64 scenario code in 0..n_scenarios-1 (semid.scenarios), or empty
    hist_type: Tensor = (
        NO_CODES  # (B, H) int64 HIST_TARGET / HIST_SOURCE per history event (0 where padded), or empty
    )
    imag_item: Tensor = NO_CODES  # (B, K) int64 imagined item id + 1, in rank order, 0 = none; or empty
    imag_conf: Tensor = NO_CONTENT  # (B, K) float32 imagination confidence (0 where none), or empty
    hist_content: Tensor = (
        NO_CONTENT  # (U, D_i) float32 content vectors of the batch's distinct history items
    )
    hist_content_index: Tensor = (
        NO_CODES  # (B, H) int64 row of hist_content per history position (a zero row where padded), or empty
    )


class ModelOutput(NamedTuple):
    """What a network's `forward(batch)` returns; `ctr.module.CTRTask` turns it into the loss."""

    logit: Tensor  # (B,) click logit
    aux_loss: Tensor  # () extra training loss, already weighted (0 when none)
    aux: dict[str, Tensor]  # scalars to log (gate means, fusion weights, ...)
    embed_sq: Tensor | None = None  # () batch mean of per-sample squared norm of looked-up embeddings


@dataclass(frozen=True)
class DataSpec:
    """What the data knows and the models need: passed from the DataModule to the model (LightningCLI
    `link_arguments`), never typed by hand."""

    n_users: int
    n_items: int
    user_feature_names: tuple[str, ...]
    item_feature_names: tuple[str, ...]
    user_feature_vocab: tuple[int, ...]  # vocabulary size per user feature, padding (0) included
    item_feature_vocab: tuple[int, ...]
    user_sid_sizes: tuple[int, ...]  # codebook size per user semantic-ID level
    item_sid_sizes: tuple[int, ...]
    history_len: int
    user_count_max: float  # largest train count, for normalising activity
    item_count_max: float
    user_content_dim: int = 0  # dimension of the users' content vectors (0 = none loaded)
    item_content_dim: int = 0
    n_scenarios: int = 0  # scenarios of the `scenario` column (0 = the batches carry none)
    scenario_names: tuple[str, ...] = ()  # scenario code -> name
    data_hash: str | None = (
        None  # fingerprint of the prepared dataset (refuses side files built from another)
    )
    imagined_k: int = 0  # imagined behaviours per user in Batch.imag_item (0 = none loaded)
    history_content: bool = False  # the batches carry Batch.hist_content / hist_content_index
