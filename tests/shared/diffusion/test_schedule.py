from __future__ import annotations

import math

import numpy as np
import pytest

from shared.diffusion.schedule import ScheduleKind, cosine_betas, linear_betas, make_betas


def alpha_bar(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 - betas)


def test_linear_matches_ho_et_al_endpoints() -> None:
    betas = linear_betas(1000)
    assert betas.dtype == np.float64
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.all(np.diff(betas) > 0)


@pytest.mark.parametrize(
    ("t", "expected"),
    # Paper steps t (1-based) and alpha_bar_t = prod_{s<=t} (1 - beta_s) of the DDPM linear schedule,
    # evaluated by hand in pure Python, 4 significant digits (alpha_bar_1000 ~ 4.04e-5 is the known value).
    [(1, 0.9999), (250, 0.5241), (500, 0.07859), (750, 0.003351), (1000, 4.036e-05)],
)
def test_linear_alpha_bar_known_values(t: int, expected: float) -> None:
    assert alpha_bar(linear_betas(1000))[t - 1] == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("t", [1, 250, 500, 750, 999])
def test_cosine_alpha_bar_follows_the_closed_form(t: int) -> None:
    """Nichol & Dhariwal Eq. 17: alpha_bar(t) = f(t) / f(0) wherever the 0.999 clip is inactive."""
    s, T = 0.008, 1000

    def f(u: float) -> float:
        return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2

    assert alpha_bar(cosine_betas(T))[t - 1] == pytest.approx(f(t) / f(0), rel=1e-9)


def test_cosine_betas_clipped_at_0999() -> None:
    betas = cosine_betas(1000)
    assert betas.max() == pytest.approx(0.999)
    assert betas[-1] == pytest.approx(0.999)
    assert np.all(betas[:-1] < 0.999)


@pytest.mark.parametrize("kind", list(ScheduleKind))
def test_schedules_are_monotone_and_in_range(kind: ScheduleKind) -> None:
    betas = make_betas(kind, 1000)
    ab = alpha_bar(betas)
    assert betas.shape == (1000,)
    assert np.all((betas > 0) & (betas < 1))
    assert np.all(np.diff(betas) >= 0)
    assert np.all(np.diff(ab) < 0)  # strictly decreasing signal
    assert 0 < ab[-1] < 1e-3 and ab[0] > 0.999  # starts clean, ends (nearly) pure noise


def test_cosine_keeps_more_signal_mid_way_than_linear() -> None:
    assert alpha_bar(cosine_betas(1000))[499] > 2 * alpha_bar(linear_betas(1000))[499]


def test_unknown_schedule_lists_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="linear, cosine"):
        make_betas("sigmoid", 1000)
