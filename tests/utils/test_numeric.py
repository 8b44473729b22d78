"""utils.numeric (safe_divide, pearson) and utils.checks against NumPy references and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cam_callbacks.utils.checks import check_choice, check_maps
from cam_callbacks.utils.numeric import pearson, safe_divide


def _np_safe_divide(num, den, fallback, require_positive=False):
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    divides = den > 0 if require_positive else den != 0  # NaN > 0 is False, NaN != 0 is True
    out = np.empty(np.broadcast(num, den).shape)
    fb = np.broadcast_to(np.asarray(fallback, dtype=np.float64), out.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[...] = np.where(divides, num / np.where(divides, den, 1.0), fb)
    return out


def _np_pearson(a, b, axis=-1, fallback=0.0):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    x = a - a.mean(axis=axis, keepdims=True)
    y = b - b.mean(axis=axis, keepdims=True)
    den = np.sqrt((x * x).sum(axis) * (y * y).sum(axis))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip((x * y).sum(axis) / den, -1.0, 1.0)
    return np.where(den > 0, r, fallback)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _with_special_denominators(rng, shape):
    den = rng.normal(size=shape)
    flat = den.reshape(-1)
    flat[::5] = 0.0  # zeros
    flat[1::7] = -np.abs(flat[1::7]) - 0.5  # clearly negative
    flat[3::11] = np.nan
    return den


@pytest.mark.parametrize("require_positive", [False, True])
def test_safe_divide_matches_numpy_with_zeros_negatives_and_nan(rng, require_positive):
    num = rng.normal(size=(6, 9))
    den = _with_special_denominators(rng, (6, 9))
    got = safe_divide(torch.from_numpy(num), torch.from_numpy(den), fallback=-7.0, require_positive=require_positive)
    want = _np_safe_divide(num, den, -7.0, require_positive)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, equal_nan=True)
    # no inf ever comes from a zero denominator
    assert not np.isinf(got.numpy()).any()
    zero = den == 0
    assert (got.numpy()[zero] == -7.0).all()
    nan = np.isnan(den)
    if require_positive:  # NaN and non-positive denominators fall back
        assert (got.numpy()[nan] == -7.0).all()
        assert (got.numpy()[den < 0] == -7.0).all()
    else:  # NaN propagates where the division happens; negatives divide
        assert np.isnan(got.numpy()[nan]).all()
        neg = den < 0
        np.testing.assert_allclose(got.numpy()[neg], num[neg] / den[neg], rtol=1e-12)


def test_safe_divide_hand_values():
    num = torch.tensor([6.0, 1.0, -4.0, 5.0])
    den = torch.tensor([3.0, 0.0, -2.0, -0.0])
    assert safe_divide(num, den).tolist() == [2.0, 0.0, 2.0, 0.0]
    assert safe_divide(num, den, fallback=9.0, require_positive=True).tolist() == [2.0, 9.0, 9.0, 9.0]


def test_safe_divide_tensor_fallback_is_taken_elementwise(rng):
    num = torch.tensor([4.0, 5.0, 6.0, 8.0])
    den = torch.tensor([2.0, 0.0, 3.0, 0.0])
    fallback = torch.tensor([10.0, 20.0, 30.0, 40.0])
    assert safe_divide(num, den, fallback=fallback).tolist() == [2.0, 20.0, 2.0, 40.0]
    # leave the numerator undivided where the denominator is 0
    assert safe_divide(num, den, fallback=num).tolist() == [2.0, 5.0, 2.0, 8.0]


def test_safe_divide_broadcasts_number_and_rows(rng):
    num = rng.normal(size=(4, 1, 5))
    den = _with_special_denominators(rng, (3, 5))
    den[np.isnan(den)] = 0.0
    fallback = rng.normal(size=(1, 3, 1))
    got = safe_divide(torch.from_numpy(num), torch.from_numpy(den), fallback=torch.from_numpy(fallback))
    assert tuple(got.shape) == (4, 3, 5)
    np.testing.assert_allclose(got.numpy(), _np_safe_divide(num, den, fallback), rtol=1e-12)
    # a Python number as numerator
    got = safe_divide(1.0, torch.from_numpy(den))
    np.testing.assert_allclose(got.numpy(), _np_safe_divide(1.0, den, 0.0), rtol=1e-12)


def test_safe_divide_keeps_float32():
    got = safe_divide(torch.ones(3), torch.tensor([2.0, 0.0, 4.0]))
    assert got.dtype == torch.float32
    assert got.tolist() == [0.5, 0.0, 0.25]


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_pearson_along_a_dim_matches_numpy(rng, dim):
    a = rng.normal(size=(5, 7, 6))
    b = 0.3 * a + rng.normal(size=(5, 7, 6))
    got = pearson(torch.from_numpy(a), torch.from_numpy(b), dim=dim)
    want = _np_pearson(a, b, axis=dim)
    assert got.dtype == torch.float64
    assert tuple(got.shape) == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    # numpy's corrcoef on one slice, as a second reference
    index = {0: (slice(None), 2, 3), 1: (2, slice(None), 3), -1: (2, 3, slice(None))}[dim]
    assert float(got[2, 3]) == pytest.approx(np.corrcoef(a[index], b[index])[0, 1], abs=1e-12)


def test_pearson_constant_rows_give_the_fallback_never_nan(rng):
    a = rng.normal(size=(4, 8))
    b = rng.normal(size=(4, 8))
    a[1] = 3.0  # constant a
    b[2] = -1.0  # constant b
    a[3] = b[3] = 0.0  # both constant
    got = pearson(torch.from_numpy(a), torch.from_numpy(b), fallback=-5.0)
    assert not torch.isnan(got).any()
    assert got[1:].tolist() == [-5.0, -5.0, -5.0]
    assert float(got[0]) == pytest.approx(np.corrcoef(a[0], b[0])[0, 1], abs=1e-12)
    assert pearson(torch.from_numpy(a), torch.from_numpy(b))[1:].tolist() == [0.0, 0.0, 0.0]


def test_pearson_is_exactly_plus_minus_one_and_clamped():
    a = torch.tensor([[0.1, 0.7, 0.2, 0.9, 0.3]], dtype=torch.float32)
    for b, sign in ((a * 3.7 + 0.1, 1.0), (-2.3 * a + 5.0, -1.0)):
        r = pearson(a, b)
        assert r.dtype == torch.float32
        assert float(r.abs()) <= 1.0  # float32 rounding could give 1.0000001 without the clamp
        assert float(r) == pytest.approx(sign, abs=1e-6)


def test_pearson_hand_value():
    # x = a - 2 = [-2, -1, 0, 1, 2]; y = b - 2 = [-2, 0, -1, 1, 2]; sum(xy) = 4 + 0 + 0 + 1 + 4 = 9; sum(x^2) = sum(y^2) = 10
    a = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    b = torch.tensor([0.0, 2.0, 1.0, 3.0, 4.0], dtype=torch.float64)
    assert float(pearson(a, b, dim=0)) == pytest.approx(0.9, abs=1e-15)


def test_check_maps_accepts_valid_and_names_each_problem():
    check_maps(torch.rand(2, 3, 4))
    check_maps(torch.zeros(0, 3, 4))
    cases = [
        (np.zeros((2, 3, 4)), "torch.Tensor"),
        (torch.zeros(3, 4), r"\(N, H, W\), got shape \(3, 4\)"),
        (torch.zeros(2, 3, 4, dtype=torch.long), "floating"),
        (torch.tensor([[[0.0, float("nan")]]]), "finite"),
        (torch.tensor([[[0.0, float("inf")]]]), "finite"),
        (torch.tensor([[[0.5, -0.25]]]), "non-negative.*-0.25"),
    ]
    for maps, message in cases:
        with pytest.raises(ValueError, match=message):
            check_maps(maps)


def test_check_choice_names_argument_and_lists_choices():
    check_choice("split", "val", ("train", "val"))
    with pytest.raises(ValueError, match=r"split='test' is not known; choose from \['train', 'val'\]"):
        check_choice("split", "test", ("train", "val"))
    with pytest.raises(ValueError, match=r"split=3 is not known"):
        check_choice("split", 3, ("train", "val"))
