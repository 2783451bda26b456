"""Hardening, no wrong results: crop boxes that overflow their dtype, eps out of range, NaN CAMs."""

from __future__ import annotations

import pytest
import torch
from hardening_common import BACKENDS, cams

import sgc_fast

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.mark.parametrize("dtype, box", [
    (torch.int8, (100, 0, 100, 5)),  # top + height = 200 wraps to -56 in int8
    (torch.uint8, (200, 0, 100, 5)),  # 300 wraps to 44 in uint8
    (torch.int16, (30000, 0, 30000, 5)),
    (torch.int32, (2**31 - 10, 0, 20, 5)),
    (torch.int64, (2**62, 0, 2**62, 5)),  # 2**63 wraps to a negative int64
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_crop_boxes_that_overflow_their_dtype_are_refused(dtype, box, backend):
    co, ca = cams()
    crop = torch.tensor([box] * 3).to(dtype)
    with pytest.raises(ValueError, match="^crop: box"):
        sgc_fast.contrast_logits(co, ca, crop=crop, flip=torch.zeros(3, dtype=torch.bool), size=(12, 10),
                                 backend=backend)


@pytest.mark.parametrize("eps", [1e19, 2.0, float("inf"), float("nan"), 0.0])
def test_eps_out_of_range_is_refused(eps):
    co, ca = cams()
    with pytest.raises(ValueError, match="^eps:"):
        sgc_fast.contrast_logits(co, ca, mask=torch.ones(3, 8, 8, dtype=torch.bool), size=(8, 8), eps=eps)
    with pytest.raises(ValueError, match="^eps:"):
        sgc_fast.SGCLoss(eps=eps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_cams_are_refused(backend):
    co, ca = cams()
    ca[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="^cam_aug: holds NaN"):
        sgc_fast.contrast_logits(co, ca, size=(8, 8), backend=backend)


