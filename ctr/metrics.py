"""CTR metrics: AUC, GAUC (impression-weighted per-user AUC, DIN KDD'18) and log loss, overall, per bucket and per
scenario; and the ranking metrics HR@K / NDCG@K of one positive among sampled negatives (the release protocol).

Functional forms are vectorised torch (no per-group Python loop); the `Metric` classes keep every prediction in
`cat` states, so they are exact (not binned) and correct under DDP. Ties count one half (average ranks).
GAUC follows DIN / FuxiCTR: a group with a single label class has no AUC and is left out of the numerator and the
denominator. torchmetrics' RetrievalAUROC differs on both counts (unweighted, one-class groups scored 0).

This module is the one GAUC implementation: `user_auc` gives the per-group parts and `gauc_from_users` folds them
(optionally re-weighted by bootstrap counts); the Metric classes, `ctr.report` and its bootstrap all call these.
Every function refuses non-finite scores (NonFiniteScoreError): a rank-based AUC of NaN scores would look like 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from semid.errors import InputError
from semid.schema import BUCKETS

LOGLOSS_EPS = 1e-7
"""Probabilities are clamped to [eps, 1 - eps] before the log (float32 predictions saturate at 1 - 6e-8)."""


def _segment_ids(*keys: Tensor) -> tuple[Tensor, Tensor]:
    """For rows already sorted by `keys`: a run id per row (a new run where any key changes) and each run's start."""
    n = keys[0].numel()
    change = torch.zeros(n, dtype=torch.bool, device=keys[0].device)
    change[0:1] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    run = torch.cumsum(change.long(), 0) - 1  # (n,) 0-based run id
    start = torch.nonzero(change).squeeze(1)  # (n_runs,) position of each run's first row
    return run, start


def _group_score_order(preds: Tensor, groups: Tensor) -> Tensor:
    """The row order sorted by (group, score); rows equal in both come in any order (ties get average ranks).

    float32 scores and group ids in [0, 2^31): one sort of an int64 key, the group in the high 32 bits and the
    score's bits made monotone in its value (an IEEE float's bits order like the float for positives and in reverse
    for negatives; flipping the magnitude bits of the negatives makes the signed int order like the float, -0.0 one
    step below +0.0, so they stay adjacent and count as one tie by value). On 100k rows that sort takes ~3 ms where
    the two stable sorts below take ~10 ms (1 CPU thread). float64 scores that are all exact float32 values (a float32
    model's outputs, widened) take the same path: narrowing them is exact and keeps their order and ties. Anything
    else: a stable sort on the score, then one on the group."""
    narrow = preds
    if preds.dtype == torch.float64:
        narrow = preds.to(torch.float32)
        if not torch.equal(narrow.to(torch.float64), preds):
            narrow = preds  # not float32 values: the two sorts
    if narrow.dtype == torch.float32 and groups.numel() > 0:
        low, high = int(groups.min()), int(groups.max())
        if low >= 0 and high < 2**31:
            bits = narrow.contiguous().view(torch.int32)
            monotone = (
                bits ^ ((bits >> 31) & 0x7FFFFFFF)
            ).long() + 2**31  # (n,) in [0, 2^32), order of preds
            return torch.sort((groups << 32) | monotone).indices
    order = torch.sort(preds, stable=True).indices
    return order[torch.sort(groups[order], stable=True).indices]


def _rank_auc_parts(preds: Tensor, target: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per group (in ascending group order): its id, the sum of its positives' average ranks within the group,
    #pos, #rows."""
    preds = preds.detach().reshape(-1)
    target = target.detach().reshape(-1).to(torch.float64)
    groups = groups.detach().reshape(-1).long()
    order = _group_score_order(preds, groups)
    # float64 from here: the conversion is exact, so ties (equal scores) are the same as in the input dtype
    g, p, y = groups[order], preds[order].to(torch.float64), target[order]
    grp, grp_start = _segment_ids(g)  # (n,), (n_groups,)
    tie, tie_start = _segment_ids(g, p)  # (n,), (n_ties,)
    tie_count = torch.bincount(tie).to(torch.float64)  # (n_ties,)
    # 1-based average rank within the group: rank of the tie run's first row plus (count - 1) / 2
    first = (tie_start - grp_start[grp[tie_start]]).to(torch.float64) + 1.0  # (n_ties,)
    rank = (first + (tie_count - 1.0) / 2.0)[tie]  # (n,)
    n_groups = grp_start.numel()
    rank_pos = torch.zeros(n_groups, dtype=torch.float64, device=y.device).index_add_(
        0, grp, rank * y
    )  # (n_groups,)
    n_pos = torch.zeros(n_groups, dtype=torch.float64, device=y.device).index_add_(0, grp, y)  # (n_groups,)
    n_all = torch.bincount(grp, minlength=n_groups).to(torch.float64)  # (n_groups,)
    return g[grp_start], rank_pos, n_pos, n_all


class NonFiniteScoreError(InputError):
    """Scores with NaN or inf: a model that diverged (or a corrupt predictions file); no metric is computed."""


class UserAUC(NamedTuple):
    """Per group (user), in ascending group order: the id, its AUC (NaN where it has one label class only), its
    rows (impressions) and positives."""

    group: Tensor  # (G,) long
    auc: Tensor  # (G,) float64, NaN where undefined
    n: Tensor  # (G,) float64
    n_pos: Tensor  # (G,) float64


def user_auc(preds: Tensor, target: Tensor, groups: Tensor) -> UserAUC:
    """AUC of every group (ties count 1/2), its rows and positives: the parts GAUC and its bootstrap are made of."""
    _check(preds, target, groups)
    if preds.numel() == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=preds.device)
        return UserAUC(torch.zeros(0, dtype=torch.long, device=preds.device), empty, empty, empty)
    ids, rank_pos, n_pos, n_all = _rank_auc_parts(preds, target, groups)
    n_neg = n_all - n_pos
    auc_g = (rank_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)  # NaN (0/0) or inf/NaN where one class
    auc_g = torch.where((n_pos > 0) & (n_neg > 0), auc_g, torch.full_like(auc_g, math.nan))
    return UserAUC(ids, auc_g, n_all, n_pos)


def gauc_from_users(auc_g: Tensor, n: Tensor, counts: Tensor | None = None) -> Tensor:
    """Impression-weighted mean of per-group AUCs, leaving out groups whose AUC is NaN.

    auc_g, n: (G,) or (G, S) (S = e.g. seeds; a group absent from a column has NaN AUC there). counts: optional
    (B, G) bootstrap multiplicities of the groups. Returns (), (S,), (B,) or (B, S) float64; NaN where no
    group with an AUC is left (0 / 0).
    """
    ok = torch.isfinite(auc_g)
    num = torch.where(ok, auc_g.to(torch.float64) * n.to(torch.float64), 0.0)  # (G, ...)
    den = torch.where(ok, n.to(torch.float64), 0.0)  # (G, ...)
    if counts is None:
        return num.sum(0) / den.sum(0)
    counts = counts.to(torch.float64)  # (B, G)
    flat = (counts @ num.reshape(num.shape[0], -1)) / (counts @ den.reshape(den.shape[0], -1))  # (B, S')
    return flat.reshape(counts.shape[0], *num.shape[1:])


def gauc_users(preds: Tensor, target: Tensor, groups: Tensor) -> int:
    """How many groups GAUC rests on: those with both label classes."""
    return int(torch.isfinite(user_auc(preds, target, groups).auc).sum())


def _check_sizes(preds: Tensor, target: Tensor, groups: Tensor | None = None) -> None:
    if preds.numel() != target.numel() or (groups is not None and groups.numel() != preds.numel()):
        raise ValueError(
            f"preds, target{', groups' if groups is not None else ''} differ in size: {preds.numel()}, "
            f"{target.numel()}{f', {groups.numel()}' if groups is not None else ''}"
        )


def _check(preds: Tensor, target: Tensor, groups: Tensor | None = None) -> None:
    """Sizes agree and every score is finite (one device sync; the Metrics check at compute, not per batch)."""
    _check_sizes(preds, target, groups)
    finite = torch.isfinite(preds.detach())
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteScoreError(
            f"{bad} of {preds.numel()} scores are NaN or inf; no metric is computed from them",
            fix="the model diverged or the predictions are corrupt: lower the learning rate or check the inputs, "
            "then re-run",
        )


def auc(preds: Tensor, target: Tensor) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties count 1/2. NaN if one class."""
    _check(preds, target)
    if preds.numel() == 0:
        return math.nan
    parts = user_auc(preds, target, torch.zeros(preds.numel(), dtype=torch.long, device=preds.device))
    return float(parts.auc[0])


def gauc(preds: Tensor, target: Tensor, groups: Tensor) -> float:
    """Group AUC: per-group AUC weighted by the group's number of rows (impressions); groups with one label class
    count in neither numerator nor denominator. NaN if no group has both classes."""
    _check(preds, target, groups)
    if preds.numel() == 0:
        return math.nan
    parts = user_auc(preds, target, groups)
    return float(gauc_from_users(parts.auc, parts.n))


def logloss(preds: Tensor, target: Tensor, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy of probabilities `preds` (clamped to [eps, 1 - eps]). NaN if empty."""
    _check(preds, target)
    if preds.numel() == 0:
        return math.nan
    p = preds.detach().reshape(-1).to(torch.float64).clamp(eps, 1.0 - eps)
    y = target.detach().reshape(-1).to(torch.float64)
    return float(-(y * torch.log(p) + (1.0 - y) * torch.log1p(-p)).mean())


def _cat(state: Tensor | list[Tensor], dtype: torch.dtype) -> Tensor:
    """A `cat` state as one tensor; an empty one (no update yet) as an empty tensor instead of an error."""
    if isinstance(state, list) and not state:
        return torch.zeros(0, dtype=dtype)
    return dim_zero_cat(state)


class _CatMetric(Metric):
    """Shared flags: exact metrics over every stored row (compute() before any update gives NaN, not a crash;
    torchmetrics still warns about it)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False


class GAUC(_CatMetric):
    """Impression-weighted group AUC (see `gauc`) over all updates; compute() refuses non-finite scores."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:
        _check_sizes(preds, target, groups)
        self.preds.append(preds.detach().reshape(-1))
        self.target.append(target.detach().reshape(-1))
        self.groups.append(groups.detach().reshape(-1).long())

    def compute(self) -> Tensor:
        value = gauc(
            _cat(self.preds, torch.float32), _cat(self.target, torch.float32), _cat(self.groups, torch.long)
        )
        return torch.tensor(value, dtype=torch.float64)


def scenario_scores(
    preds: Tensor, target: Tensor, scenario: Tensor, names: Sequence[str]
) -> dict[str, float]:
    """AUC, log loss and rows of every scenario: keys f"scenario/{name}/{auc|logloss|n}" (NaN where undefined).
    GAUC is reported overall only (a scenario's users are few in the small scenarios)."""
    _check(preds, target, scenario)
    out: dict[str, float] = {}
    for code, name in enumerate(names):  # over scenarios (a few), not rows
        mask = scenario.reshape(-1) == code
        p, y = preds.reshape(-1)[mask], target.reshape(-1)[mask]
        out[f"scenario/{name}/auc"] = auc(p, y)
        out[f"scenario/{name}/logloss"] = logloss(p, y)
        out[f"scenario/{name}/n"] = float(p.numel())
    return out


class CTRMetrics(_CatMetric):
    """AUC, GAUC (by user), log loss, count and positive rate overall, per item / user activity bucket and, when
    the batches carry scenarios, per scenario.

    compute() keys: "auc", "gauc", "logloss", "n", "pos_rate", f"{kind}_{bucket}/{name}" for kind in
    (item, user), bucket in semid.schema.BUCKETS, name in (auc, gauc, logloss, n), and (given `scenario_names`
    and scenarios in the updates) f"scenario/{name}/{auc|logloss|n}". NaN where undefined.
    compute() raises NonFiniteScoreError if any stored score is NaN or inf.
    """

    def __init__(self, scenario_names: Sequence[str] = ()) -> None:
        super().__init__()
        self.scenario_names = tuple(scenario_names)
        for name in ("preds", "target", "user", "item_bucket", "user_bucket", "scenario"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        preds: Tensor,
        target: Tensor,
        user: Tensor,
        item_bucket: Tensor,
        user_bucket: Tensor,
        scenario: Tensor | None = None,
    ) -> None:
        """preds (B,) probabilities, target (B,) 0/1, user (B,) ids, item_bucket / user_bucket (B,) BUCKETS indices,
        scenario (B,) codes (None or empty = none; scored only when scenario_names are given)."""
        _check_sizes(preds, target, user)
        _check_sizes(preds, item_bucket, user_bucket)
        self.preds.append(preds.detach().reshape(-1))
        self.target.append(target.detach().reshape(-1))
        self.user.append(user.detach().reshape(-1).long())
        self.item_bucket.append(item_bucket.detach().reshape(-1).long())
        self.user_bucket.append(user_bucket.detach().reshape(-1).long())
        if self.scenario_names and scenario is not None and scenario.numel():
            _check_sizes(preds, scenario)
            self.scenario.append(scenario.detach().reshape(-1).long())

    def compute(self) -> dict[str, float]:
        preds = _cat(self.preds, torch.float32)
        target = _cat(self.target, torch.float32)
        user = _cat(self.user, torch.long)
        out = _scores(preds, target, user)
        out["pos_rate"] = float(target.double().mean()) if target.numel() else math.nan
        for kind, bucket in (
            ("item", _cat(self.item_bucket, torch.long)),
            ("user", _cat(self.user_bucket, torch.long)),
        ):
            for b, name in enumerate(BUCKETS):
                mask = bucket == b
                for key, value in _scores(preds[mask], target[mask], user[mask]).items():
                    out[f"{kind}_{name}/{key}"] = value
        scenario = _cat(self.scenario, torch.long)
        if self.scenario_names and scenario.numel():
            if scenario.numel() != preds.numel():
                raise ValueError(
                    f"{scenario.numel()} scenario codes for {preds.numel()} rows: some batches had none"
                )
            out.update(scenario_scores(preds, target, scenario, self.scenario_names))
        return out


def _scores(preds: Tensor, target: Tensor, user: Tensor) -> dict[str, float]:
    return {
        "auc": auc(preds, target),
        "gauc": gauc(preds, target, user),
        "logloss": logloss(preds, target),
        "n": float(preds.numel()),
    }


# -- ranking (one positive among sampled negatives) ------------------------------------------------------------


def positive_rank(scores: Tensor) -> tuple[Tensor, Tensor]:
    """scores (N, C), the positive in column 0 and C - 1 negatives -> per list (N,) the number of negatives scored
    above the positive and the number tied with it."""
    if scores.dim() != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be (lists, 1 + negatives), got {tuple(scores.shape)}")
    _check(scores, scores)
    pos = scores[:, :1]  # (N, 1)
    above = (scores[:, 1:] > pos).sum(1)  # (N,)
    tied = (scores[:, 1:] == pos).sum(1)  # (N,)
    return above, tied


def _position_weights(scores: Tensor, k: int) -> Tensor:
    """(N, k) probability that the positive lands at 0-based position j < k, ties broken uniformly at random: it is
    at positions above .. above + tied, each with probability 1 / (tied + 1)."""
    above, tied = positive_rank(scores)  # (N,), (N,)
    j = torch.arange(k, device=scores.device)  # (k,)
    inside = (j >= above[:, None]) & (j <= (above + tied)[:, None])  # (N, k)
    return inside.to(torch.float64) / (tied[:, None] + 1).to(torch.float64)  # (N, k)


def hit_rate_at_k(scores: Tensor, k: int = 10) -> float:
    """HR@K: the share of lists whose positive (column 0 of scores (N, C)) ranks in the top K; ties with negatives
    are broken uniformly at random, in expectation (a constant scorer gets K / C, not 0 or 1). NaN if N = 0."""
    if scores.shape[0] == 0:
        return math.nan
    return float(_position_weights(scores, k).sum(1).mean())


def ndcg_at_k(scores: Tensor, k: int = 10) -> float:
    """NDCG@K with one relevant item (column 0 of scores (N, C)): mean of 1 / log2(2 + position) where the
    position is < K, else 0; ties broken uniformly at random, in expectation. NaN if N = 0."""
    if scores.shape[0] == 0:
        return math.nan
    gain = 1.0 / torch.log2(torch.arange(k, device=scores.device, dtype=torch.float64) + 2.0)  # (k,)
    return float((_position_weights(scores, k) * gain).sum(1).mean())
