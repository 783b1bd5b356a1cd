"""ctr.calibration (Platt scaling): recovers a known map, keeps every ranking (AUC, GAUC), never raises the log loss
of the data it was fitted on, and fixes a mis-calibrated model's test log loss when fitted on its validation split."""

from __future__ import annotations

import pytest
import torch

from ctr import metrics
from ctr.calibration import A_MIN, fit_platt


def _sample(n: int, a: float, b: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores p = sigmoid(x) of a model whose true click probability is sigmoid(a x + b): (p, y, user)."""
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(n, generator=g, dtype=torch.float64)  # (n,) the model's logits
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(a * x + b)).to(torch.float64)
    user = torch.randint(0, 200, (n,), generator=g)
    return torch.sigmoid(x), y, user


def test_recovers_a_known_map():
    p, y, _ = _sample(50_000, 0.6, -0.8, seed=0)
    platt = fit_platt(p, y)
    assert platt.a == pytest.approx(0.6, abs=0.03) and platt.b == pytest.approx(-0.8, abs=0.04)
    assert platt.n == 50_000


def test_monotone_so_auc_and_gauc_are_unchanged():
    p, y, user = _sample(5_000, 0.5, 1.0, seed=1)
    p = torch.round(p * 50) / 50  # ties must stay ties
    q = fit_platt(p, y).apply(p)
    assert metrics.auc(q, y) == metrics.auc(p, y)
    assert metrics.gauc(q, y, user) == pytest.approx(metrics.gauc(p, y, user), abs=1e-12)
    # an anti-correlated score cannot flip the order: the slope stays positive
    platt = fit_platt(1 - p, y)
    assert platt.a == A_MIN and metrics.auc(platt.apply(1 - p), y) == metrics.auc(1 - p, y)


def test_never_worse_on_the_data_it_was_fitted_on():
    for a, b, seed in ((1.0, 0.0, 2), (0.3, -1.5, 3), (2.5, 0.7, 4)):
        p, y, _ = _sample(3_000, a, b, seed)
        assert metrics.logloss(fit_platt(p, y).apply(p), y) <= metrics.logloss(p, y) + 1e-12


def test_a_miscalibrated_model_gets_a_better_test_logloss():
    # trained under another base rate (sampled negatives) and over-confident: offset and temperature are wrong
    p_val, y_val, _ = _sample(4_000, 0.4, -1.2, seed=5)
    p_test, y_test, _ = _sample(4_000, 0.4, -1.2, seed=6)
    platt = fit_platt(p_val, y_val)  # validation only
    raw, cal = metrics.logloss(p_test, y_test), metrics.logloss(platt.apply(p_test), y_test)
    assert cal < raw - 0.05
    floor = metrics.logloss(torch.full_like(y_test, float(y_val.mean())), y_test)  # a bias-only predictor
    assert raw > floor > cal  # worse than the floor raw, better once calibrated


def test_refuses_what_has_no_finite_map():
    with pytest.raises(ValueError, match="both label classes"):
        fit_platt(torch.tensor([0.2, 0.7]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError):
        fit_platt(torch.tensor([]), torch.tensor([]))


def test_calibrate_refuses_a_folder_that_is_not_a_run_and_creates_nothing(tmp_path):
    from pipelines.calibrate import calibrate_run
    from semid.errors import InputError

    missing = tmp_path / "typo"
    for report in (True, False):
        with pytest.raises(InputError, match="not a `semid run` directory"):
            calibrate_run(str(missing), report=report)
    assert not missing.exists()
