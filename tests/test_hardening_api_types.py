"""Hardening, API types: NumPy and tensor scalars are numbers; strings, None and lists name the argument; sizes
are two integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hardening_common import cams

import sgc_fast

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), np.int64(1), torch.tensor(0.5)])
def test_numpy_and_tensor_scalars_are_numbers(value):
    co, ca = cams()
    mask = torch.ones(3, 8, 8, dtype=torch.bool)
    got = sgc_fast.contrast_logits(co, ca, mask=mask, size=(8, 8), temperature=value)
    want = sgc_fast.contrast_logits(co, ca, mask=mask, size=(8, 8), temperature=float(value))
    assert torch.equal(got, want)
    assert sgc_fast.SGCLoss(temperature=value).temperature == float(value)


@pytest.mark.parametrize("value", ["0.5", None, [0.5], True])
def test_non_numbers_name_the_argument(value):
    co, ca = cams()
    with pytest.raises(TypeError, match="^temperature: expected a positive number"):
        sgc_fast.contrast_logits(co, ca, size=(8, 8), temperature=value)
    with pytest.raises(TypeError, match="^temperature:"):
        sgc_fast.SGCLoss(temperature=value)


@pytest.mark.parametrize("size", [12, "12", "12x12", (12.0, 12), (12,), (True, 12), None])
def test_size_must_be_two_integers(size):
    co, ca = cams()
    with pytest.raises(ValueError, match="^size: expected"):
        sgc_fast.contrast_logits(co, ca, size=size)
    with pytest.raises(ValueError, match="^size: expected"):
        sgc_fast.CGCLoss(size=size)
