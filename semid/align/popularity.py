"""Item behaviour statistics as text (after AKT-Rec, whose item encoder reads N-day behaviour statistics next to the
text): each item's count of positive train interactions, rendered as a popularity word appended to its text.

    level(i) = new     if n_i = 0
               low     if 0 < n_i <= q(1/3)
               medium  if q(1/3) < n_i <= q(2/3)
               high    if n_i > q(2/3)

where n_i counts item i's train rows with label 1 and q(.) are quantiles (linear interpolation) of n over the items
with n > 0. Words, not numbers: an item `semid assign` embeds later has no train rows and reads "popularity: new",
exactly as an item without positives did in the build.
"""

from __future__ import annotations

import torch
from torch import Tensor

LEVELS = ("new", "low", "medium", "high")
SEPARATOR = " | popularity: "


def popularity_levels(counts: Tensor) -> list[str]:
    """The level word of each item from its positive train count (N_items,) (see the module docstring)."""
    seen = counts[counts > 0].double()
    if seen.numel() == 0:
        return [LEVELS[0]] * counts.shape[0]
    bounds = torch.quantile(seen, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))  # (2,)
    level = 1 + torch.bucketize(counts.double(), bounds)  # (N_items,) 1 low, 2 medium, 3 high
    level = torch.where(counts > 0, level, 0)
    return [LEVELS[i] for i in level.tolist()]


def with_popularity(texts: list[str], levels: list[str] | None = None) -> list[str]:
    """`texts` with "<text> | popularity: <level>" appended; `levels` None = every item "new" (items that have no
    train rows, as the new items of `semid assign`)."""
    levels = [LEVELS[0]] * len(texts) if levels is None else levels
    if len(levels) != len(texts):
        raise ValueError(f"{len(levels)} popularity levels for {len(texts)} texts")
    return [f"{text}{SEPARATOR}{level}" for text, level in zip(texts, levels)]
