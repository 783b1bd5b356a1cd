"""ctr.metrics against brute-force pairwise oracles (concordant pairs + 1/2 ties), per user in plain Python."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from ctr.metrics import (
    GAUC,
    CTRMetrics,
    NonFiniteScoreError,
    auc,
    gauc,
    gauc_from_users,
    gauc_users,
    logloss,
    user_auc,
)
from semid.errors import InputError
from semid.schema import BUCKETS


def oracle_auc(preds: list[float], target: list[int]) -> float:
    pos = [p for p, y in zip(preds, target) if y == 1]
    neg = [p for p, y in zip(preds, target) if y == 0]
    if not pos or not neg:
        return math.nan
    won = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return won / (len(pos) * len(neg))


def oracle_gauc(preds: list[float], target: list[int], groups: list[int]) -> float:
    num = den = 0.0
    for g in set(groups):
        rows = [i for i, h in enumerate(groups) if h == g]
        a = oracle_auc([preds[i] for i in rows], [target[i] for i in rows])
        if not math.isnan(a):
            num += a * len(rows)
            den += len(rows)
    return num / den if den else math.nan


def oracle_logloss(preds: list[float], target: list[int], eps: float = 1e-7) -> float:
    total = 0.0
    for p, y in zip(preds, target):
        p = min(max(p, eps), 1 - eps)
        total -= math.log(p) if y == 1 else math.log(1 - p)
    return total / len(preds)


def random_data(seed: int, n: int = 600, n_users: int = 40, decimals: int = 1):
    """Scores rounded so ties are frequent; a few users get a single label class."""
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, n_users, (n,), generator=g) * 7 + 3  # sparse, non-dense ids
    target = (torch.rand(n, generator=g) < 0.4).long()
    target[user % 5 == 0] = 1  # one-class users (all positive)
    target[user % 11 == 0] = 0  # one-class users (all negative)
    preds = torch.round((0.3 * target + 0.7 * torch.rand(n, generator=g, dtype=torch.float64)) * 10**decimals)
    preds = (preds / 10**decimals).clamp(0, 1)
    return preds, target, user


def assert_close(a: float, b: float, tol: float = 1e-9) -> None:
    if math.isnan(b):
        assert math.isnan(a), (a, b)
    else:
        assert abs(a - b) <= tol, (a, b)


@pytest.mark.parametrize("seed", range(5))
def test_auc_gauc_match_pairwise_oracle(seed: int) -> None:
    preds, target, user = random_data(seed, decimals=1 + seed % 2)
    p, y, u = preds.tolist(), target.tolist(), user.tolist()
    assert_close(auc(preds, target), oracle_auc(p, y))
    assert_close(gauc(preds, target, user), oracle_gauc(p, y, u))
    assert_close(logloss(preds, target), oracle_logloss(p, y))
    # the data must exercise what the oracle is about: ties and excluded one-class users
    assert len(set(p)) < len(p) // 5
    per_user = {g: {t for t, h in zip(y, u) if h == g} for g in set(u)}
    assert any(len(s) == 1 for s in per_user.values()) and any(len(s) == 2 for s in per_user.values())


@pytest.mark.parametrize("seed", range(3))
def test_float32_scores_one_key_sort_matches_the_oracle(seed: int) -> None:
    """float32 scores (and float64 ones that are exact float32 values) take the one-int64-key sort (group in the high
    bits, the float's bits made monotone): equal to the oracle with negative scores (logits), ties, -0.0 next to
    +0.0; group ids of 2^31 or more, or negative ones, and float64 scores that are not float32 values take the two
    stable sorts (the oracle tests above run on such scores), with the same per-group parts."""
    preds, target, user = random_data(seed, decimals=1)
    logits = (preds * 8.0 - 4.0).to(torch.float32)  # negative and positive, ties kept
    logits[:7] = 0.0
    logits[7:14] = -0.0
    p, y, u = logits.tolist(), target.tolist(), user.tolist()
    assert any(math.copysign(1.0, v) < 0 for v in p if v == 0.0) and min(p) < 0 < max(p)
    assert_close(gauc(logits, target, user), oracle_gauc(p, y, u))
    assert_close(auc(logits, target), oracle_auc(p, y))
    assert_close(gauc(logits, target, user), gauc(logits.to(torch.float64), target, user), tol=1e-15)
    off32 = logits.to(torch.float64) + 1e-12  # not float32 values: the two-sort path
    assert not torch.equal(off32.to(torch.float32).to(torch.float64), off32)
    assert_close(gauc(off32, target, user), oracle_gauc(off32.tolist(), y, u))
    assert not torch.equal(preds.to(torch.float32).to(torch.float64), preds)  # random_data: the two-sort path
    fast = user_auc(logits, target, user)
    assert fast.group.tolist() == sorted(set(u))
    for shift in (2**31, -(2**40)):  # outside [0, 2^31): the two-sort path, same per-group parts
        big = user_auc(logits, target, user + shift)
        assert big.group.tolist() == [g + shift for g in fast.group.tolist()]
        assert torch.equal(big.auc.nan_to_num(-1.0), fast.auc.nan_to_num(-1.0))


def test_known_values() -> None:
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    assert auc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == 0.5
    assert math.isnan(auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))
    assert math.isnan(auc(torch.tensor([]), torch.tensor([])))
    # user 0: AUC 1 over 3 rows; user 1: AUC 0 over 2 rows; user 2 one class (excluded) -> (3 * 1 + 2 * 0) / 5
    preds = torch.tensor([0.9, 0.1, 0.2, 0.1, 0.9, 0.5])
    target = torch.tensor([1, 0, 0, 1, 0, 1])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    assert gauc(preds, target, groups) == pytest.approx(0.6, abs=1e-12)
    assert math.isnan(gauc(preds[5:], target[5:], groups[5:]))
    assert logloss(torch.tensor([0.0, 1.0]), torch.tensor([0, 1])) == pytest.approx(-math.log(1 - 1e-7))
    assert math.isfinite(logloss(torch.tensor([1.0]), torch.tensor([0])))  # clamped, not inf


def test_gauc_metric_accumulates_updates() -> None:
    preds, target, user = random_data(7)
    metric = GAUC()
    for chunk in torch.arange(len(preds)).split(97):
        metric.update(preds[chunk], target[chunk], user[chunk])
    assert_close(float(metric.compute()), oracle_gauc(preds.tolist(), target.tolist(), user.tolist()))


def test_ctr_metrics_equals_functional_overall_and_per_bucket() -> None:
    preds, target, user = random_data(3, n=800)
    g = torch.Generator().manual_seed(0)
    item_bucket = torch.randint(0, len(BUCKETS), (len(preds),), generator=g)
    item_bucket[item_bucket == 3] = 2  # the item "cold" bucket stays empty: NaN and n = 0
    user_bucket = user % len(BUCKETS)
    metric = CTRMetrics()
    for chunk in torch.arange(len(preds)).split(150):
        metric.update(
            preds[chunk].float(), target[chunk], user[chunk], item_bucket[chunk], user_bucket[chunk]
        )
    out = metric.compute()
    p32 = preds.float()  # what was stored
    assert_close(out["auc"], auc(p32, target))
    assert_close(out["gauc"], gauc(p32, target, user))
    assert_close(out["logloss"], logloss(p32, target))
    assert out["n"] == len(preds)
    assert out["pos_rate"] == pytest.approx(target.double().mean().item())
    expected_keys = {"auc", "gauc", "logloss", "n", "pos_rate"}
    for kind, bucket in (("item", item_bucket), ("user", user_bucket)):
        for b, name in enumerate(BUCKETS):
            m = bucket == b
            expected_keys |= {f"{kind}_{name}/{k}" for k in ("auc", "gauc", "logloss", "n")}
            assert out[f"{kind}_{name}/n"] == int(m.sum())
            sub_p, sub_y, sub_u = p32[m].tolist(), target[m].tolist(), user[m].tolist()
            assert_close(out[f"{kind}_{name}/auc"], oracle_auc(sub_p, sub_y))
            assert_close(out[f"{kind}_{name}/gauc"], oracle_gauc(sub_p, sub_y, sub_u) if sub_p else math.nan)
            assert_close(out[f"{kind}_{name}/logloss"], oracle_logloss(sub_p, sub_y) if sub_p else math.nan)
    assert set(out) == expected_keys
    assert out["item_cold/n"] == 0 and math.isnan(out["item_cold/auc"])


def test_ctr_metrics_without_updates_is_all_nan() -> None:
    metric = CTRMetrics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric.compute()
    assert out["n"] == 0
    assert all(math.isnan(v) for k, v in out.items() if not k.endswith("n"))
    assert all(out[f"{kind}_{b}/n"] == 0 for kind in ("item", "user") for b in BUCKETS)
    metric.reset()
    metric.update(
        torch.tensor([0.2, 0.7]), torch.tensor([0, 1]), torch.tensor([5, 5]), torch.zeros(2), torch.ones(2)
    )
    out = metric.compute()
    assert (
        out["auc"] == 1.0 and out["gauc"] == 1.0 and out["item_head/auc"] == 1.0 and out["user_torso/n"] == 2
    )


def test_user_auc_parts_match_the_oracle_and_fold_into_gauc() -> None:
    preds, target, user = random_data(11)
    parts = user_auc(preds, target, user)
    assert parts.group.tolist() == sorted(set(user.tolist()))
    for g, a, n, n_pos in zip(
        parts.group.tolist(), parts.auc.tolist(), parts.n.tolist(), parts.n_pos.tolist()
    ):
        rows = (user == g).nonzero().squeeze(1)
        assert_close(a, oracle_auc(preds[rows].tolist(), target[rows].tolist()))
        assert n == len(rows) and n_pos == int(target[rows].sum())
    assert_close(float(gauc_from_users(parts.auc, parts.n)), gauc(preds, target, user))
    assert gauc_users(preds, target, user) == sum(
        len(set(target[user == g].tolist())) == 2 for g in set(user.tolist())
    )
    # bootstrap weights: counting a user twice = the oracle on data where that user's rows appear twice
    counts = torch.ones(2, len(parts.group), dtype=torch.float64)
    counts[1, 0], counts[1, 3] = 2.0, 0.0
    both = gauc_from_users(parts.auc, parts.n, counts)  # (2,)
    keep = user != parts.group[3]
    twice = user == parts.group[0]
    p2 = torch.cat([preds[keep], preds[twice]])
    y2 = torch.cat([target[keep], target[twice]])
    u2 = torch.cat([user[keep], user[twice] + 10_000])  # the copy is its own user
    assert_close(float(both[0]), gauc(preds, target, user))
    assert_close(float(both[1]), oracle_gauc(p2.tolist(), y2.tolist(), u2.tolist()))
    # (G, S) columns are folded independently; a group absent from a column has NaN AUC there
    two = torch.stack([parts.auc, torch.full_like(parts.auc, math.nan)], 1)
    out = gauc_from_users(two, torch.stack([parts.n, parts.n], 1), counts)  # (2, 2)
    assert out.shape == (2, 2) and math.isnan(float(out[0, 1]))
    assert_close(float(out[0, 0]), float(both[0]))
    assert_close(float(out[1, 0]), float(both[1]))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_are_refused(bad: float) -> None:
    """Issue 11: all-NaN predictions gave AUC ~0.5 and a finite GAUC; every metric must refuse them."""
    preds, target, user = random_data(2)
    all_bad = torch.full_like(preds, bad)
    one_bad = preds.clone()
    one_bad[5] = bad
    for p in (all_bad, one_bad):
        calls = (
            lambda p=p: auc(p, target),
            lambda p=p: gauc(p, target, user),
            lambda p=p: logloss(p, target),
        )
        for call in calls:
            with pytest.raises(NonFiniteScoreError, match="NaN or inf") as err:
                call()
            assert isinstance(err.value, InputError) and "learning rate" in err.value.fix
    metric = GAUC()
    metric.update(one_bad, target, user)  # storing is cheap and unchecked; compute refuses
    with pytest.raises(NonFiniteScoreError):
        metric.compute()
    ctr = CTRMetrics()
    zeros = torch.zeros_like(user)
    ctr.update(all_bad.float(), target, user, zeros, zeros)
    with pytest.raises(NonFiniteScoreError):
        ctr.compute()


# -- per scenario and ranking -----------------------------------------------------------------------------------


def test_ctr_metrics_per_scenario_match_masked_oracles():
    from ctr.metrics import CTRMetrics, auc, logloss

    g = torch.Generator().manual_seed(3)
    n = 300
    preds, target = torch.rand(n, generator=g), torch.randint(0, 2, (n,), generator=g).float()
    user, scen = torch.randint(0, 20, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)
    buckets = torch.zeros(n, dtype=torch.long)
    m = CTRMetrics(("a", "b", "c"))
    for part in torch.arange(n).split(64):  # several updates, as batches
        m.update(preds[part], target[part], user[part], buckets[part], buckets[part], scen[part])
    out = m.compute()
    for code, name in enumerate("abc"):
        mask = scen == code
        assert out[f"scenario/{name}/auc"] == pytest.approx(auc(preds[mask], target[mask]))
        assert out[f"scenario/{name}/logloss"] == pytest.approx(logloss(preds[mask], target[mask]))
        assert out[f"scenario/{name}/n"] == int(mask.sum())
    assert out["scenario/a/auc"] != out["scenario/b/auc"]
    plain = CTRMetrics()
    plain.update(preds, target, user, buckets, buckets, scen)
    assert not any(k.startswith("scenario/") for k in plain.compute())


def _ranking_oracle(scores: torch.Tensor, k: int) -> tuple[float, float]:
    """Every order of the positive among its ties, enumerated: mean hit and DCG over those placements."""
    import math

    hits, gains = [], []
    for row in scores.tolist():
        pos, neg = row[0], row[1:]
        above = sum(s > pos for s in neg)
        tied = sum(s == pos for s in neg)
        places = [above + j for j in range(tied + 1)]  # each equally likely
        hits.append(sum(p < k for p in places) / len(places))
        gains.append(sum(1 / math.log2(p + 2) for p in places if p < k) / len(places))
    return sum(hits) / len(hits), sum(gains) / len(gains)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_hr_and_ndcg_match_a_brute_force_oracle(k):
    from ctr.metrics import hit_rate_at_k, ndcg_at_k

    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 6, (50, 12), generator=g).float()  # coarse: many ties
    hr, ndcg = _ranking_oracle(scores, k)
    assert hit_rate_at_k(scores, k) == pytest.approx(hr)
    assert ndcg_at_k(scores, k) == pytest.approx(ndcg)
    perfect = torch.cat([torch.ones(4, 1), torch.zeros(4, 11)], 1)
    assert hit_rate_at_k(perfect, k) == 1.0 and ndcg_at_k(perfect, k) == pytest.approx(1.0)
    assert hit_rate_at_k(torch.zeros(4, 20), k) == pytest.approx(
        k / 20
    )  # a constant scorer: chance, not 0 or 1
    last = torch.cat([torch.zeros(4, 1), torch.ones(4, 11)], 1)
    assert hit_rate_at_k(last, k) == (1.0 if k > 11 else 0.0)
