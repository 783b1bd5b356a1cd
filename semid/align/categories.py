"""The user category objective of the alignment (after AKT-Rec's user loss: predict the interest categories of the
user's next click): the categories of each item from a list[str] column of items.parquet, their multi-hot
targets, the linear head from a user's aligned vector to category logits, and its loss.

    logits = W z_u + b                                          (C,)  z_u: the user's aligned unit vector
    L_cat  = -1/C sum_c [ y_c log sigmoid(logits_c) + (1 - y_c) log(1 - sigmoid(logits_c)) ]

averaged over the users of a batch; y = multi-hot of the categories of the user's next item. The head starts at the
prior (W = 0, b_c = logit of category c's rate among the training targets), so L_cat starts at the prior's entropy
and falls only as far as z_u carries category information.
"""

from __future__ import annotations

import polars as pl
import torch
from torch import Tensor, nn

from semid.errors import InputError
from semid.schema import ITEMS_FILE

FIX = (
    "set align_config.category_column to a list[str] column of items.parquet (e.g. genre), "
    "or align_config.user_category_weight to 0"
)


def item_categories(items: pl.DataFrame, column: str | None) -> list[list[str]]:
    """The categories of each row of `items` (item_id order), from its list[str] `column`; a null cell is [].
    InputError when the column is unset, missing, not list[str], or holds no category at all."""
    if column is None or column not in items.columns:
        problem = "no category column is set" if column is None else "the column is missing"
        raise InputError(
            f"{problem}: the user category objective (user_category_weight > 0) needs one",
            file=ITEMS_FILE,
            column=column,
            fix=FIX,
        )
    dtype = items.schema[column]
    if dtype != pl.List(pl.String):
        raise InputError(
            f"the category column must be list[str], not {dtype}", file=ITEMS_FILE, column=column, fix=FIX
        )
    values = items[column].fill_null([]).to_list()
    if not any(values):
        raise InputError("the category column holds no category", file=ITEMS_FILE, column=column, fix=FIX)
    return values


def multi_hot(categories: list[list[str]]) -> tuple[list[str], Tensor]:
    """(vocabulary: every category seen, sorted; (N_items, C) float32 multi-hot rows)."""
    vocabulary = sorted({c for row in categories for c in row})
    index = {c: i for i, c in enumerate(vocabulary)}
    pairs = [(r, index[c]) for r, row in enumerate(categories) for c in row]
    rows, cols = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).unbind(1)  # (P,), (P,)
    targets = torch.zeros(len(categories), len(vocabulary))  # (N_items, C)
    targets[rows, cols] = 1.0
    return vocabulary, targets


def prior_head(dim: int, targets: Tensor) -> nn.Linear:
    """Linear D -> C predicting the prior: zero weights, bias = logit of each category's rate in `targets` (B, C)
    (clamped away from 0 and 1). No random draw, so adding the head leaves the seeded RNG stream as it was."""
    rate = targets.float().mean(dim=0).nan_to_num(0.5).clamp(1e-4, 1 - 1e-4)  # (C,); no target: 0.5
    head = nn.utils.skip_init(nn.Linear, dim, targets.shape[1])  # no random init: both tensors are set here
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.logit(rate))
    return head


def category_loss(head: nn.Linear, z_user: Tensor, targets: Tensor) -> Tensor:
    """L_cat of the module docstring: mean BCE-with-logits of head(z_user) (B, C) against multi-hot targets."""
    return nn.functional.binary_cross_entropy_with_logits(head(z_user), targets)
