"""Property-based: for any shapes, dtypes, strides, magnitudes, crop boxes and options, ``batched_cam`` and
``contrast_logits`` on the ``cpu`` and ``reference`` backends either raise a ``ValueError``/``TypeError`` whose
message starts with the argument's name, or return finite values equal to the float64 reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sgc_fast
from sgc_fast import reference

BACKENDS = [b for b in ("cpu", "reference") if b in sgc_fast.available_backends("cpu")]
FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
INTS = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64]
ARGS = ("feats", "grads", "kind", "cam_orig", "cam_aug", "mask", "crop", "flip", "size", "temperature", "eps",
        "neg_cam", "neg_mask", "self_index")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _names_an_argument(exc: Exception) -> bool:
    msg = str(exc)
    return any(msg.startswith(f"{a}:") for a in ARGS)


def _tensor(draw, shape, dtype, magnitude):
    t = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    t = (t * magnitude).to(dtype)
    if draw(st.booleans()) and len(shape) >= 2:  # a non-contiguous view with the same values
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t


def _magnitude(draw, dtype):
    top = {torch.float16: 1e3, torch.bfloat16: 1e30, torch.float32: 1e30, torch.float64: 1e30}[dtype]
    return draw(st.sampled_from([0.0, 1e-30, 1e-6, 1.0, 1e3, top]))


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(data=st.data())
def test_batched_cam_is_an_error_or_the_float64_reference(backend, data):
    draw = data.draw
    B, K, h, w = (draw(st.integers(0 if i == 0 else 1, 4)) for i in range(4))
    f_dtype, g_dtype = draw(st.sampled_from(FLOATS)), draw(st.sampled_from(FLOATS))
    feats = _tensor(draw, (B, K, h, w), f_dtype, _magnitude(draw, f_dtype))
    grads = _tensor(draw, (B, K, h, w), g_dtype, _magnitude(draw, g_dtype)) - (0.5 if g_dtype != torch.float16 else 0)
    kind = draw(st.sampled_from(["hires", "grad"]))
    try:
        got = sgc_fast.batched_cam(feats, grads, kind, backend=backend)
    except (ValueError, TypeError) as exc:
        assert _names_an_argument(exc), exc
        return
    want = reference.batched_cam(feats.double(), grads.double(), kind)
    assert got.shape == want.shape and torch.isfinite(got).all()
    scale = want.abs().max().item() if want.numel() else 0.0
    tol = (1e-12 if got.dtype == torch.float64 else 1e-5) * max(scale, 1e-300) * K
    assert (got.double() - want).abs().max().item() <= tol or scale == 0 and got.abs().max().item() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(data=st.data())
def test_contrast_logits_is_an_error_or_the_float64_reference(backend, data):
    draw = data.draw
    B = draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    H, W = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    dtype = draw(st.sampled_from(FLOATS))
    magnitude = _magnitude(draw, dtype)
    cam_orig = _tensor(draw, (B, h, w), dtype, magnitude)
    cam_aug = _tensor(draw, (B, h, w), dtype, magnitude)
    kw = {"size": (H, W), "temperature": draw(st.sampled_from([0.05, 0.5, 1.0, 10.0])),
          "eps": draw(st.sampled_from([1e-12, 1e-8, 1e-3, 1.0, 1e19]))}
    method = draw(st.sampled_from(["sgc", "cgc", "both"]))
    if method in ("sgc", "both"):
        kw["mask"] = torch.rand(B, H, W, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))) < \
            draw(st.sampled_from([0.0, 0.3, 1.0]))
    if method in ("cgc", "both"):
        idt = draw(st.sampled_from(INTS))
        lo, hi = (0, 127) if idt == torch.int8 else (0, 255) if idt == torch.uint8 else (-3, 300)
        box = [draw(st.integers(lo, hi)) for _ in range(4)]
        if draw(st.booleans()):  # mostly boxes inside the map
            top, left = draw(st.integers(0, H - 1)), draw(st.integers(0, W - 1))
            box = [top, left, draw(st.integers(1, H - top)), draw(st.integers(1, W - left))]
        kw["crop"] = torch.tensor([box] * B).to(idt)
        kw["flip"] = torch.tensor([draw(st.booleans()) for _ in range(B)])
    try:
        got = sgc_fast.contrast_logits(cam_orig, cam_aug, backend=backend, **kw)
    except (ValueError, TypeError) as exc:
        assert _names_an_argument(exc), exc
        return
    want = reference.contrast_logits(cam_orig.double(), cam_aug.double(),
                                     **{**kw, "crop": kw["crop"].long() if "crop" in kw else None})
    assert got.shape == want.shape
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite)  # -inf only where the reference has it (none here)
    tol = (1e-9 if got.dtype == torch.float64 else 2e-5) / kw["temperature"]
    assert (got.double()[finite] - want[finite]).abs().max().item() <= tol
