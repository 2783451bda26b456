"""Bad input gets a one-line error that names the argument; backends that cannot run say why.

Device mismatches use the "meta" device (no GPU needed).
"""

from __future__ import annotations

import pytest
import torch

import sgc_fast
from sgc_fast import ops

B, K, h, w, H, W, N = 3, 4, 5, 3, 12, 10, 4


def cam(*shape, **kw):
    return torch.rand(*(shape or (B, h, w)), **kw) + 0.1


def assert_one_line_naming(excinfo, name: str, *more: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg.strip(), f"multi-line message: {msg!r}"
    assert msg.startswith(f"{name}:"), f"{name!r} not named first in {msg!r}"
    for part in more:
        assert part in msg, f"{part!r} not in {msg!r}"


# ---------------------------------------------------------------------------------------------------------
# batched_cam
# ---------------------------------------------------------------------------------------------------------

CAM_CASES = {
    # id: (feats, grads, kind, exception, argument named, more text in the message)
    "feats_3d": (lambda: torch.rand(B, K, h), lambda: torch.rand(B, K, h), "hires", ValueError, "feats", ()),
    "feats_not_tensor": (lambda: [[1.0]], lambda: torch.rand(B, K, h, w), "hires", ValueError, "feats", ()),
    "grads_3d": (lambda: torch.rand(B, K, h, w), lambda: torch.rand(B, K, h), "hires", ValueError, "grads", ()),
    "grads_shape": (lambda: torch.rand(B, K, h, w), lambda: torch.rand(B, K, h, w + 1), "hires", ValueError, "grads",
                    (str([B, K, h, w]),)),
    "grads_batch": (lambda: torch.rand(B, K, h, w), lambda: torch.rand(B + 1, K, h, w), "hires", ValueError,
                    "grads", ()),
    "compact_shape": (lambda: torch.rand(B, K, h, w), lambda: torch.rand(B, K + 1), "hires", ValueError, "grads", ()),
    "feats_int": (lambda: torch.ones(B, K, h, w, dtype=torch.int32), lambda: torch.rand(B, K, h, w), "hires",
                  TypeError, "feats", ("int32",)),
    "grads_bool": (lambda: torch.rand(B, K, h, w), lambda: torch.ones(B, K, h, w, dtype=torch.bool), "hires",
                   TypeError, "grads", ()),
    "grads_device": (lambda: torch.rand(B, K, h, w), lambda: torch.rand(B, K, h, w, device="meta"), "hires",
                     ValueError, "grads", ("meta",)),
    "empty": (lambda: torch.rand(0, K, h, w), lambda: torch.rand(0, K, h, w), "hires", ValueError, "feats", ()),
    "kind": (lambda: torch.rand(B, K, h, w), lambda: torch.rand(B, K, h, w), "gradcam++", ValueError, "kind",
             ("gradcam++",)),
}


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", list(CAM_CASES))
def test_batched_cam_errors(case, backend):
    feats, grads, kind, exc, name, more = CAM_CASES[case]
    with pytest.raises(exc) as info:
        sgc_fast.batched_cam(feats(), grads(), kind, backend=backend)
    assert_one_line_naming(info, name, *more)


# ---------------------------------------------------------------------------------------------------------
# contrast_logits
# ---------------------------------------------------------------------------------------------------------


def valid_args(**over):
    """A valid call (SGC + CGC + separate negatives), with some arguments replaced."""
    kw = dict(
        cam_orig=cam(), cam_aug=cam(), mask=torch.rand(B, H, W) < 0.5,
        crop=torch.tensor([[0, 0, H, W], [1, 2, 3, 4], [H - 1, W - 1, 1, 1]]), flip=torch.tensor([True, False, True]),
        size=(H, W), temperature=0.5, eps=1e-8, neg_cam=cam(N, h, w), neg_mask=torch.rand(N, H, W) < 0.5,
        self_index=torch.tensor([0, -1, N - 1]),
    )
    kw.update(over)
    return kw


CONTRAST_CASES = {
    # id: (replaced arguments, exception, argument named, more text)
    "cam_orig_2d": (dict(cam_orig=cam(B, h)), ValueError, "cam_orig", ()),
    "cam_aug_4d": (dict(cam_aug=cam(B, 1, h, w)), ValueError, "cam_aug", ()),
    "cam_aug_int": (dict(cam_aug=torch.ones(B, h, w, dtype=torch.int64)), TypeError, "cam_aug", ()),
    "cam_shape_mismatch": (dict(cam_aug=cam(B, h + 1, w)), ValueError, "cam_aug", ()),
    "cam_batch_mismatch": (dict(cam_aug=cam(B + 1, h, w)), ValueError, "cam_aug", ()),
    "cam_orig_device": (dict(cam_orig=cam(device="meta")), ValueError, "cam_orig", ("meta",)),
    "empty_map": (dict(cam_orig=cam(B, 0, w), cam_aug=cam(B, 0, w)), ValueError, "cam_aug", ()),
    "size_negative": (dict(size=(0, W)), ValueError, "size", ()),
    "size_scalar": (dict(size=12), ValueError, "size", ()),
    "temperature_zero": (dict(temperature=0.0), ValueError, "temperature", ()),
    "temperature_negative": (dict(temperature=-0.5), ValueError, "temperature", ()),
    "temperature_inf": (dict(temperature=float("inf")), ValueError, "temperature", ()),
    "eps_zero": (dict(eps=0.0), ValueError, "eps", ()),
    "eps_negative": (dict(eps=-1e-8), ValueError, "eps", ()),
    "mask_shape": (dict(mask=torch.ones(B, H, W + 1, dtype=torch.bool)), ValueError, "mask", (str([B, H, W]),)),
    "mask_batch": (dict(mask=torch.ones(B - 1, H, W, dtype=torch.bool)), ValueError, "mask", ()),
    "mask_dtype": (dict(mask=torch.ones(B, H, W, dtype=torch.int32)), TypeError, "mask", ()),
    "mask_device": (dict(mask=torch.ones(B, H, W, dtype=torch.bool, device="meta")), ValueError, "mask", ("meta",)),
    "crop_without_flip": (dict(flip=None), ValueError, "crop", ("flip",)),
    "flip_without_crop": (dict(crop=None), ValueError, "flip", ("crop",)),
    "crop_shape": (dict(crop=torch.zeros(B, 3, dtype=torch.int64)), ValueError, "crop", ()),
    "crop_float": (dict(crop=torch.ones(B, 4)), TypeError, "crop", ()),
    "crop_device": (dict(crop=torch.ones(B, 4, dtype=torch.int64, device="meta")), ValueError, "crop", ()),
    "crop_outside_bottom": (dict(crop=torch.tensor([[0, 0, H, W], [H - 2, 0, 3, 1], [0, 0, 1, 1]])), ValueError,
                            "crop", ("sample 1",)),
    "crop_outside_right": (dict(crop=torch.tensor([[0, 0, H, W], [0, 0, 1, 1], [0, 1, 1, W]])), ValueError, "crop",
                           ("sample 2",)),
    "crop_negative_top": (dict(crop=torch.tensor([[-1, 0, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1]])), ValueError, "crop",
                          ("sample 0",)),
    "crop_empty_height": (dict(crop=torch.tensor([[0, 0, H, W], [3, 3, 0, 2], [0, 0, 1, 1]])), ValueError, "crop",
                          ("sample 1",)),
    "crop_empty_width": (dict(crop=torch.tensor([[0, 0, H, W], [0, 0, 1, 1], [3, 3, 2, 0]])), ValueError, "crop",
                         ("sample 2",)),
    "flip_shape": (dict(flip=torch.tensor([True, False])), ValueError, "flip", ()),
    "flip_dtype": (dict(flip=torch.tensor([1, 0, 1])), TypeError, "flip", ()),
    "neg_cam_shape": (dict(neg_cam=cam(N, h, w + 1)), ValueError, "neg_cam", ()),
    "neg_cam_empty": (dict(neg_cam=cam(0, h, w), neg_mask=torch.ones(0, H, W, dtype=torch.bool),
                           self_index=None), ValueError, "neg_cam", ()),
    "neg_cam_dtype": (dict(neg_cam=torch.ones(N, h, w, dtype=torch.int32)), TypeError, "neg_cam", ()),
    "neg_cam_device": (dict(neg_cam=cam(N, h, w, device="meta")), ValueError, "neg_cam", ("meta",)),
    "neg_mask_missing": (dict(neg_mask=None), ValueError, "neg_mask", ("mask",)),
    "neg_mask_without_mask": (dict(mask=None), ValueError, "neg_mask", ()),
    "neg_mask_shape": (dict(neg_mask=torch.ones(N + 1, H, W, dtype=torch.bool)), ValueError, "neg_mask", ()),
    "neg_mask_without_neg_cam": (dict(neg_cam=None, self_index=None), ValueError, "neg_mask", ("neg_cam",)),
    "self_index_without_neg_cam": (dict(neg_cam=None, neg_mask=None), ValueError, "self_index", ("neg_cam",)),
    "self_index_too_large": (dict(self_index=torch.tensor([0, N, 1])), ValueError, "self_index", ()),
    "self_index_too_small": (dict(self_index=torch.tensor([0, -2, 1])), ValueError, "self_index", ()),
    "self_index_shape": (dict(self_index=torch.tensor([0, 1])), ValueError, "self_index", ()),
    "self_index_float": (dict(self_index=torch.tensor([0.0, 1.0, 2.0])), TypeError, "self_index", ()),
    "single_sample_without_negatives": (dict(cam_orig=cam(1, h, w), cam_aug=cam(1, h, w), mask=None, crop=None,
                                             flip=None, neg_cam=None, neg_mask=None, self_index=None),
                                        ValueError, "cam_aug", ("B >= 2",)),
}


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", list(CONTRAST_CASES))
def test_contrast_logits_errors(case, backend):
    over, exc, name, more = CONTRAST_CASES[case]
    kw = valid_args(**over)
    with pytest.raises(exc) as info:
        sgc_fast.contrast_logits(**kw, backend=backend)
    assert_one_line_naming(info, name, *more)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_valid_arguments_pass(backend):
    """The base call of the cases above is valid (so each case fails for its own reason only)."""
    logits = sgc_fast.contrast_logits(**valid_args(), backend=backend)
    assert logits.shape == (B, 1 + N) and torch.isneginf(logits[0, 1]) and torch.isneginf(logits[2, N])
    assert torch.isfinite(logits[1]).all()
    # and B = 1 is allowed with separate negatives
    one = valid_args(cam_orig=cam(1, h, w), cam_aug=cam(1, h, w), mask=None, neg_mask=None, crop=None, flip=None,
                     self_index=torch.tensor([2]))
    assert sgc_fast.contrast_logits(**one, backend=backend).shape == (1, 1 + N)


def test_loss_and_module_errors():
    feats, grads = torch.rand(B, K, h, w), torch.rand(B, K, h, w)
    with pytest.raises(ValueError) as info:
        sgc_fast.saliency_contrast_loss(feats, grads, feats, grads, kind="nope", size=(H, W))
    assert_one_line_naming(info, "kind")
    with pytest.raises(ValueError) as info:
        sgc_fast.saliency_contrast_loss(feats, grads, feats, grads, size=(H, W), temperature=-1.0)
    assert_one_line_naming(info, "temperature")
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError) as info:
            sgc_fast.SGCLoss(temperature=bad)
        assert_one_line_naming(info, "temperature")
    with pytest.raises(ValueError) as info:
        sgc_fast.CGCLoss(kind="eigen")
    assert_one_line_naming(info, "kind")
    with pytest.raises(ValueError) as info:
        sgc_fast.SGCLoss()(feats, grads, feats, grads, mask=torch.ones(H, W))
    assert_one_line_naming(info, "mask")
    with pytest.raises(ValueError) as info:
        sgc_fast.CGCLoss(size=(H, W))(feats, grads, feats, grads, crop=torch.tensor([[0, 0, H, W]] * B), flip=None)
    assert_one_line_naming(info, "crop", "flip")


def test_grads_helpers_errors():
    logits, feats = torch.randn(B, 6, requires_grad=True), torch.rand(B, K, h, w)
    weight = torch.randn(6, K)
    with pytest.raises(ValueError) as info:
        sgc_fast.target_grads(logits[0], feats, torch.zeros(B, dtype=torch.long))
    assert_one_line_naming(info, "logits")
    with pytest.raises(ValueError) as info:
        sgc_fast.target_grads(logits, feats[:2], torch.zeros(B, dtype=torch.long))
    assert_one_line_naming(info, "feats")
    for targets in (torch.zeros(B), torch.zeros(B + 1, dtype=torch.long), [0, 1, 2]):
        with pytest.raises(ValueError) as info:
            sgc_fast.head_grads(weight, feats, targets)
        assert_one_line_naming(info, "targets")
    with pytest.raises(ValueError) as info:
        sgc_fast.head_grads(weight[:, :-1], feats, torch.zeros(B, dtype=torch.long))
    assert_one_line_naming(info, "feats")
    with pytest.raises(ValueError) as info:
        sgc_fast.head_grads(weight[0], feats, torch.zeros(B, dtype=torch.long))
    assert_one_line_naming(info, "weight")
    with pytest.raises(ValueError) as info:
        sgc_fast.head_grads(weight, feats, torch.zeros(B, dtype=torch.long, device="meta"))
    assert_one_line_naming(info, "targets", "meta")


# ---------------------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------------------


def test_unknown_backend():
    feats = torch.rand(B, K, h, w)
    with pytest.raises(ValueError) as info:
        sgc_fast.batched_cam(feats, feats, backend="opencl")
    assert_one_line_naming(info, "backend", "opencl", "reference")
    with pytest.raises(ValueError) as info:
        sgc_fast.contrast_logits(cam(), cam(), size=(H, W), backend="Reference")
    assert_one_line_naming(info, "backend")


def test_unknown_backend_from_environment(monkeypatch):
    monkeypatch.setenv("SGC_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError) as info:
        sgc_fast.contrast_logits(cam(), cam(), size=(H, W))
    assert_one_line_naming(info, "backend", "fastest")


def test_environment_selects_the_backend(monkeypatch):
    monkeypatch.setenv("SGC_FAST_BACKEND", "reference")
    assert sgc_fast.resolve_backend(None, torch.device("cpu")) == "reference"
    assert sgc_fast.resolve_backend("cpu", torch.device("cpu")) == "cpu"  # explicit wins
    monkeypatch.delenv("SGC_FAST_BACKEND")
    assert sgc_fast.resolve_backend(None, torch.device("cpu")) == "cpu"


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_explicit_backend_that_cannot_run(backend):
    why = sgc_fast.explain_backends("cpu")[backend]
    if why == "ok":
        pytest.skip(f"{backend} runs on CPU tensors in this process (e.g. TRITON_INTERPRET=1)")
    feats = torch.rand(B, K, h, w)
    with pytest.raises(RuntimeError) as info:
        sgc_fast.batched_cam(feats, feats, backend=backend)
    assert_one_line_naming(info, "backend", backend, why)
    with pytest.raises(RuntimeError) as info:
        sgc_fast.contrast_logits(cam(), cam(), size=(H, W), backend=backend)
    assert_one_line_naming(info, "backend", why)
    with pytest.raises(RuntimeError) as info:
        sgc_fast.saliency_contrast_loss(feats, feats, feats, feats, size=(H, W), backend=backend)
    assert_one_line_naming(info, "backend", why)


def test_explain_backends_reports_reasons():
    report = sgc_fast.explain_backends("cpu")
    assert set(report) == set(sgc_fast.BACKENDS)
    assert report["reference"] == "ok" and report["cpu"] == "ok"
    assert "cpu" in report["cuda"]  # "tensors on cpu"
    for backend, why in report.items():
        assert isinstance(why, str) and why.strip() and "\n" not in why, (backend, why)
    assert sgc_fast.available_backends("cpu") == [b for b, why in report.items() if why == "ok"]
    meta = sgc_fast.explain_backends("meta")
    assert meta["reference"] == "ok" and "meta" in meta["cpu"]


def test_no_backend_for_device():
    with pytest.raises(RuntimeError) as info:
        ops.resolve_backend("cpu", torch.device("meta"))
    assert_one_line_naming(info, "backend", "meta")
