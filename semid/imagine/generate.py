"""Imagining K behaviours per user: K masked slots appended to the user's recent history, unmasked over S steps,
most confident first (LLaDA's low-confidence remasking); and the popularity and random baselines.

Each masked slot's candidate is the real item (never one of the user's train items, never one already imagined
for that user) with the highest model probability of its code tuple (`SIDDiffusion.item_log_probs`, ties to the
most popular item); at each step the most confident slots keep their item, the others are re-masked and
predicted again with the new context. Everything is argmax: the result is a function of the model alone.

With a `beam`, the tuple probabilities come from a beam search over the prefix tree (`item_log_probs(beam=...)`),
constrained to the prefixes that still hold an item the user may get, so at the start of each step every slot's
beam ends in at least one allowed item. A slot whose kept items were all taken by the user's other slots within
the same step is scored again on the exact path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from semid.errors import InputError
from semid.imagine.model import SIDDiffusion, viable_prefixes
from semid.imagine.sequences import ItemCodes, PrefixTree


class Imagined(NamedTuple):
    items: Tensor  # (U, K) int64 item ids, in unmasking order of the slots' positions (slot 0 first)
    confidence: Tensor  # (U, K) float32 model probability of the item's code tuple when it was fixed
    step: Tensor  # (U, K) int64 step (0..S-1) at which the slot was unmasked


def _allowed(exclude: Tensor, catalogue: ItemCodes, k: int) -> Tensor:
    """(U, N) bool: items with an ID that the user has not seen; InputError if some user has fewer than k."""
    allowed = ~exclude & catalogue.known  # (U, N)
    fewest = int(allowed.sum(1).min()) if len(allowed) else k
    if fewest < k:
        raise InputError(
            f"a user has only {fewest} unseen items with an ID, fewer than k={k}",
            fix="lower k (imagined behaviours per user)",
        )
    return allowed


def _schedule(k: int, steps: int) -> list[int]:
    """How many slots are unmasked at each of `steps` steps (as even as possible, larger first)."""
    steps = max(1, min(steps, k))
    return [k // steps + (i < k % steps) for i in range(steps)]


@torch.no_grad()
def imagine(
    model: SIDDiffusion,
    history: Tensor,
    exclude: Tensor,
    catalogue: ItemCodes,
    tree: PrefixTree,
    *,
    k: int,
    steps: int | None = None,
    batch_size: int = 128,
    beam: int | None = None,
) -> Imagined:
    """K imagined items for each user: history (U, H) item ids left-aligned, -1 pad; exclude (U, N) bool.

    H + k must fit `model.max_len`; `steps` defaults to k (one slot per step). `beam` (None: exact) scores each
    slot's items by a beam search that keeps that many prefixes per level: far cheaper on a large catalogue,
    the same items when the beam holds every prefix."""
    u, h = history.shape
    if beam is not None and beam < 1:
        raise InputError(f"beam={beam}", fix="use a beam of at least 1 prefix per level (or none: exact)")
    if h + k > model.max_len:
        raise InputError(
            f"history length {h} + k={k} exceeds the model's max_len {model.max_len}",
            fix="raise model.max_len or lower k",
        )
    allowed_all = _allowed(exclude, catalogue, k)
    # columns in popularity order: argmax returns the first maximum, i.e. the most popular of equal tuples
    order = catalogue.order  # (N,)
    schedule = _schedule(k, steps or k)
    model.eval()
    out_items = torch.empty(u, k, dtype=torch.long)
    out_conf = torch.empty(u, k)
    out_step = torch.empty(u, k, dtype=torch.long)
    for start in range(0, u, batch_size):
        hist = history[start : start + batch_size]  # (B, H)
        b = len(hist)
        lengths = (hist >= 0).sum(1)  # (B,)
        slots = lengths[:, None] + torch.arange(k)  # (B, K) positions of the imagined slots
        seq = torch.full((b, h + k), -1, dtype=torch.long)  # (B, T)
        seq[:, :h] = hist
        rows = torch.arange(b)[:, None].expand(b, k)  # (B, K)
        pad = torch.arange(h + k)[None] >= (lengths + k)[:, None]  # (B, T)
        masked = torch.zeros(b, h + k, dtype=torch.bool)
        masked[rows, slots] = True
        allowed = allowed_all[start : start + b][:, order]  # (B, N) in popularity order
        free = torch.ones(b, k, dtype=torch.bool)  # slots still masked
        for step, count in enumerate(schedule):
            codes = catalogue.codes[seq.clamp(min=0)]  # (B, T, L)
            hidden = model.encode(codes, masked, pad)[rows, slots]  # (B, K, d)
            flat = hidden.reshape(b * k, -1)  # (B*K, d)
            viable = None
            if beam is not None:
                user_allowed = torch.empty_like(allowed)  # (B, N) in item order, without the imagined items
                user_allowed[:, order] = allowed
                viable = [
                    m.repeat_interleave(k, 0) for m in viable_prefixes(user_allowed, tree)
                ]  # [(B*K, P)]
            logp = model.item_log_probs(flat, catalogue.codes, tree, beam=beam, viable=viable)  # (B*K, N)
            logp = logp[:, order].reshape(b, k, -1)  # (B, K, N) in popularity order
            for _ in range(count):
                # best allowed item of every free slot, then fix the most confident slot of each user
                best, arg = logp.masked_fill(~allowed[:, None, :], -torch.inf).max(-1)  # (B, K)
                lost = free & (best == -torch.inf)  # (B, K) beam slots whose allowed items were all taken
                if lost.any():
                    exact = model.item_log_probs(hidden[lost], catalogue.codes, tree)  # (M, N)
                    logp[lost] = exact[:, order]
                    best, arg = logp.masked_fill(~allowed[:, None, :], -torch.inf).max(-1)  # (B, K)
                slot = best.masked_fill(~free, -torch.inf).argmax(1)  # (B,)
                r = torch.arange(b)
                item = order[arg[r, slot]]  # (B,)
                out_items[start + r, slot] = item
                out_conf[start + r, slot] = best[r, slot].exp()
                out_step[start + r, slot] = step
                free[r, slot] = False
                allowed[r, arg[r, slot]] = False
                seq[r, slots[r, slot]] = item
                masked[r, slots[r, slot]] = False
    return Imagined(out_items, out_conf, out_step)


def top_allowed(scores: Tensor, allowed: Tensor, order: Tensor, k: int) -> Tensor:
    """The k highest-`scores` (U, N) allowed items per user (ties by `order`, the popularity order): (U, k)."""
    ranked = scores[:, order].masked_fill(~allowed[:, order], -torch.inf)  # (U, N) in popularity order
    # topk on equal values is not guaranteed stable: a stable descending sort is
    return order[torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :k]]  # (U, k)


def popularity_baseline(exclude: Tensor, catalogue: ItemCodes, k: int) -> Tensor:
    """The k most popular train items each user has not seen: (U, k) item ids."""
    allowed = _allowed(exclude, catalogue, k)
    scores = catalogue.popularity.float().expand(len(exclude), -1)  # (U, N)
    return top_allowed(scores, allowed, catalogue.order, k)


def random_baseline(exclude: Tensor, catalogue: ItemCodes, k: int, generator: torch.Generator) -> Tensor:
    """k uniformly random unseen items with an ID per user: (U, k) item ids."""
    allowed = _allowed(exclude, catalogue, k)
    scores = torch.rand(allowed.shape, generator=generator)  # (U, N)
    return top_allowed(scores, allowed, catalogue.order, k)
