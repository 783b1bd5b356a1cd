"""Post-hoc calibration of click probabilities by Platt scaling (Platt, 1999): p' = sigmoid(a * logit(p) + b), fitted
on a model's *validation* predictions by minimising log loss, then applied to its test predictions.

Why one global Platt map and not isotonic regression (or per-bucket maps): it has two parameters, so it cannot
overfit a small validation split (ML-1M cold items, one val row per user on Amazon) the way a step function with one
level per distinct score can; with a > 0 it is strictly increasing, so every ranking -- AUC, and GAUC within each user
-- is exactly the model's own, and only the probabilities (log loss) change; and it corrects exactly the shift a CTR
model trained under another base rate (sampled negatives, cold items) shows, a wrong offset and temperature of its
logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

CLAMP = 1e-7
"""Probabilities are clamped to [CLAMP, 1 - CLAMP] before the logit (a score of exactly 0 or 1 stays finite)."""
A_MIN = 1e-3
"""The slope is kept at least this: a map that is not increasing would reorder (or tie) the predictions."""


@dataclass(frozen=True)
class Platt:
    """The fitted map p' = sigmoid(a * logit(p) + b); `a` > 0 (strictly increasing), `n` = rows it was fitted on."""

    a: float
    b: float
    n: int

    def apply(self, p: Tensor) -> Tensor:
        """Calibrated probabilities, float64, same shape as `p`; ties stay ties and no two predictions swap order,
        so AUC and GAUC are unchanged. The map runs once per distinct value of `p`, in ascending order, and a running
        max removes any last-ulp wobble: vectorised log / sigmoid can give one input two results a ulp apart
        depending on where it sits in the SIMD loop (seen on an AVX-512 CPU, where it broke a tie)."""
        values, inverse = torch.unique(
            p.reshape(-1).to(torch.float64), return_inverse=True
        )  # (U,) ascending, (n,)
        q = torch.cummax(torch.sigmoid(self.a * _logit(values) + self.b), 0).values  # (U,) non-decreasing
        return q.index_select(0, inverse).view(p.shape)


def _logit(p: Tensor) -> Tensor:
    p = p.to(torch.float64).clamp(CLAMP, 1.0 - CLAMP)
    return torch.log(p) - torch.log1p(-p)


def _loss(z: Tensor, y: Tensor) -> Tensor:
    """Mean BCE of logits z."""
    return (torch.nn.functional.softplus(z) - y * z).mean()


def _newton(x: Tensor, y: Tensor, w: Tensor, free: Tensor, iters: int = 100, tol: float = 1e-10) -> Tensor:
    """Damped Newton on the mean BCE of sigmoid(w[0] * x + w[1]) over the parameters where `free` is True."""
    X = torch.stack([x, torch.ones_like(x)], 1)  # (n, 2)
    idx = free.nonzero().flatten()
    for _ in range(iters):
        z = X @ w  # (n,)
        p = torch.sigmoid(z)
        g = (X.T @ (p - y) / x.numel())[idx]  # (k,)
        if float(g.abs().max()) < tol:
            break
        h = ((X.T * (p * (1.0 - p))) @ X / x.numel())[idx][:, idx]  # (k, k)
        step = torch.zeros_like(w)
        step[idx] = torch.linalg.solve(h + 1e-12 * torch.eye(idx.numel(), dtype=h.dtype), g)
        before, t = _loss(z, y), 1.0
        while t > 1e-10 and _loss(X @ (w - t * step), y) > before - 1e-4 * t * float(g @ step[idx]):
            t /= 2  # backtracking: separable data would otherwise overshoot
        w = w - t * step
    return w


def fit_platt(p: Tensor, y: Tensor) -> Platt:
    """Fit the map on predictions `p` (n,) of labels `y` (n,) in {0, 1}: the (a, b) of least mean BCE with a >= A_MIN
    (Newton in float64; when the unconstrained optimum has a < A_MIN, the constrained one lies on a = A_MIN, since the
    loss is convex, and only b is fitted). ValueError for no rows or a single label class (b would be infinite)."""
    y = y.to(torch.float64).reshape(-1)
    x = _logit(p.reshape(-1))
    if x.numel() == 0 or x.numel() != y.numel():
        raise ValueError(
            f"fit_platt needs as many labels as predictions, at least one: {x.numel()}, {y.numel()}"
        )
    if not 0.0 < float(y.mean()) < 1.0:
        raise ValueError("fit_platt needs both label classes")
    both = torch.tensor([True, True])
    w = _newton(x, y, torch.tensor([1.0, 0.0], dtype=torch.float64), both)
    if float(w[0]) < A_MIN:
        w = _newton(
            x, y, torch.tensor([A_MIN, float(w[1])], dtype=torch.float64), torch.tensor([False, True])
        )
    return Platt(float(w[0]), float(w[1]), int(x.numel()))
