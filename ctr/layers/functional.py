"""Small tensor functions and modules the layers share: `Embedding` and `Dropout` (faster on CPU), table init,
activity level, masked mean, the L2 term, id helpers."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

EMBED_INIT_STD = 1e-2
HEAD_BUCKET = 0  # index of "head" in semid.schema.BUCKETS


class _DenseLookup(torch.autograd.Function):
    """weight[idx] with `nn.Embedding`'s dense gradient: rows accumulated by `index_add_`, the padding row's zeroed.

    On CPU this backward runs ~3x faster than `embedding_dense_backward` (which sorts the indices first) for the
    history lookups of a CTR batch (2,048 x 20 ids into a few thousand rows: 1.2 vs 3.6 ms on 1 thread). The sums
    are the same; only the order in which a row's gradients are added differs (float rounding)."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, idx: Tensor, padding_idx: int | None) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.rows, ctx.padding_idx = weight.shape[0], padding_idx
        return weight.index_select(0, idx.reshape(-1)).view(*idx.shape, weight.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (idx,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])  # (N, d)
        out = flat.new_zeros(ctx.rows, flat.shape[1]).index_add_(0, idx.reshape(-1), flat)  # (rows, d)
        if ctx.padding_idx is not None:
            out[ctx.padding_idx] = 0
        return out, None, None


class Embedding(nn.Embedding):
    """`nn.Embedding` (same arguments, parameters and state dict) whose dense-gradient lookup uses `_DenseLookup`.
    Sparse tables (`sparse=True`, for SparseAdam), `max_norm` and lookups without autograd take torch's path."""

    def forward(self, idx: Tensor) -> Tensor:
        if (
            self.sparse
            or self.max_norm is not None
            or not (torch.is_grad_enabled() and self.weight.requires_grad)
        ):
            return super().forward(idx)
        return _DenseLookup.apply(self.weight, idx, self.padding_idx)


class Dropout(nn.Dropout):
    """`nn.Dropout` (same argument, same expectation: each element kept with probability 1 - p and scaled by
    1 / (1 - p)) whose CPU training mask costs a quarter of the random numbers.

    torch draws one Mersenne-Twister number per element for `F.dropout` on CPU, which made dropout ~10% of a CTR
    training step (2 x 5 ms of DeepFM's 59 ms at batch 2,048, 1 thread). Here each random int64 gives four 16-bit
    uniforms, compared with round(p * 65536): forward + backward of a (2,048, 400) dropout 16.0 -> 6.6 ms. p is
    therefore rounded to a multiple of 1/65,536 (0.1 keeps 0.89999 of the elements). The stream is torch's default
    generator, so a seeded run repeats itself. Eval mode, p = 0, in-place dropout and other devices take torch's
    path."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        if self.p == 1.0:
            return x * 0.0
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        uniform16 = words.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
        keep = uniform16 >= round(self.p * 65536) - 32768  # P = 1 - p (to 1/65,536)
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


def init_table(table: nn.Embedding | nn.EmbeddingBag, std: float = EMBED_INIT_STD) -> None:
    """Small normal init (N(0,1), torch's default, swamps the MLPs of a CTR model); padding row stays zero."""
    nn.init.normal_(table.weight, std=std)
    if table.padding_idx is not None:
        with torch.no_grad():
            table.weight[table.padding_idx].zero_()


def activity(count: Tensor, count_max: float) -> Tensor:
    """a = log(1 + count) / log(1 + count_max), in [0, 1] (0 = cold)."""
    return (torch.log1p(count.float()) / math.log1p(max(count_max, 1.0))).clamp(0.0, 1.0)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x (B, H, d) over the positions where mask (B, H) is true; zeros for an all-padded row."""
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, H, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, d)


def squared_norm(*xs: Tensor) -> Tensor:
    """Per-sample squared L2 norm of the looked-up embeddings, averaged over the batch (the CTR L2 regulariser)."""
    return sum(x.pow(2).flatten(1).sum(1).mean() for x in xs)


def first_occurrence(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Unique ids (N,) of ids (B,) and, for each, the position of one sample holding it (N,)."""
    uniq, inverse = torch.unique(ids, return_inverse=True)  # (N,), (B,)
    pos = torch.full_like(uniq, ids.numel()).scatter_reduce(
        0, inverse, torch.arange(ids.numel(), device=ids.device), reduce="amin"
    )  # (N,)
    return uniq, pos


class Distinct(NamedTuple):
    """The distinct ids of a tensor of ids with the codes and count each one carries."""

    ids: Tensor  # (U,) each id once, ascending
    codes: Tensor  # (U, L)
    count: Tensor  # (U,)
    inverse: Tensor  # (N,) row in `ids` of each position of the flattened input


def distinct(ids: Tensor, codes: Tensor, count: Tensor, n: int) -> Distinct | None:
    """The distinct ids in 0..n of ids (...), with their codes (..., L) and counts (...); None where an id appears
    with two different codes or counts (then it is no function of the id and must be handled per position).

    A bitmap over 0..n instead of a sort (`torch.unique`): a history of 2048 x 20 ids is deduplicated in O(N + n).
    """
    flat = ids.reshape(-1)  # (N,)
    size = flat.numel()
    first = torch.full((n + 1,), size, dtype=torch.long, device=ids.device)
    first = first.scatter_reduce(0, flat, torch.arange(size, device=ids.device), reduce="amin")  # (n + 1,)
    seen = first < size  # (n + 1,)
    uniq = seen.nonzero().squeeze(1)  # (U,)
    inverse = (seen.cumsum(0) - 1).index_select(0, flat)  # (N,)
    flat_codes, flat_count = codes.reshape(size, -1), count.reshape(size)  # (N, L), (N,)
    rep = first.index_select(0, uniq)  # (U,) first position of each id
    uniq_codes, uniq_count = flat_codes.index_select(0, rep), flat_count.index_select(0, rep)  # (U, L), (U,)
    same_codes = torch.equal(uniq_codes.index_select(0, inverse), flat_codes)
    if not (same_codes and torch.equal(uniq_count.index_select(0, inverse), flat_count)):
        return None
    return Distinct(uniq, uniq_codes, uniq_count, inverse)


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (these twelve bases are exact there)."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n in bases:
        return True
    if any(n % p == 0 for p in bases):
        return False
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def largest_prime_at_most(n: int) -> int:
    return next(k for k in range(max(n, 2), 1, -1) if is_prime(k))
