import numpy as np
import pytest
import torch

from diffusers_agdm.utils.validation import check_finite, check_int


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_check_int_accepts(value):
    assert check_int("n", value) == int(value) and type(check_int("n", value)) is int


@pytest.mark.parametrize("value", [0, -2, 2.5, 3.0, True, "3", None, float("nan")])
def test_check_int_rejects(value):
    with pytest.raises(ValueError, match=r"^`n` must be an integer >= 1, got "):
        check_int("n", value)


def test_check_int_minimum():
    assert check_int("k", 0, minimum=0) == 0
    assert check_int("k", -5, minimum=None) == -5
    with pytest.raises(ValueError, match=">= 0"):
        check_int("k", -1, minimum=0)


@pytest.mark.parametrize("value", [0, 0.5, 1, np.float32(0.25)])
def test_check_finite_accepts(value):
    assert check_finite("s", value, minimum=0, maximum=1) == pytest.approx(float(value))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -0.1, 1.5, True, "1", None,
                                   torch.tensor(0.5)])
def test_check_finite_rejects(value):
    with pytest.raises(ValueError, match=r"^`s` must be a finite number >= 0 and <= 1, got "):
        check_finite("s", value, minimum=0, maximum=1)


def test_check_finite_exclusive_minimum():
    with pytest.raises(ValueError, match=r"> 0 and <= 1, got 0\."):
        check_finite("strength", 0, minimum=0, maximum=1, inclusive_min=False)
    assert check_finite("strength", 1e-9, minimum=0, inclusive_min=False) == 1e-9
    assert check_finite("x", -1e30) == -1e30
