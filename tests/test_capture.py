"""capture_feats: records the layer's output, removes its hook on exit (also on error), leaks nothing."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

import sgc_fast
from sgc_fast import Captured


def small_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def live() -> tuple[int, int]:
    """(live tensors, live Captured records), in one sweep over the tracked objects."""
    types = [type(o) for o in gc.get_objects()]
    return sum(issubclass(t, torch.Tensor) for t in types), sum(t is Captured for t in types)


@pytest.mark.parametrize("by", ["name", "module"])
def test_records_the_layer_output(by):
    model = small_model()
    x = torch.randn(2, 3, 7, 5)
    layer = "2" if by == "name" else model[2]
    with sgc_fast.capture_feats(model, layer) as cap:
        assert isinstance(cap, Captured) and cap.feats is None
        assert len(model[2]._forward_hooks) == 1
        logits = model(x)
    expected = model[2](model[1](model[0](x)))
    assert cap.feats.shape == (2, 6, 7, 5)
    assert torch.equal(cap.feats, expected)
    assert cap.feats.requires_grad  # attached to the graph: target_grads can differentiate logits w.r.t. it
    grads = sgc_fast.target_grads(logits, cap.feats, logits.argmax(1))
    assert grads.shape == cap.feats.shape
    assert len(model[2]._forward_hooks) == 0 and all_hooks(model) == 0


def test_nested_layer_by_dotted_name():
    model = small_model()
    with sgc_fast.capture_feats(model, "2.0") as cap:
        model(torch.randn(1, 3, 4, 4))
    assert cap.feats.shape == (1, 6, 4, 4) and (cap.feats < 0).any()  # the conv, before the relu
    assert all_hooks(model) == 0


def test_keeps_the_most_recent_output():
    model = small_model()
    with sgc_fast.capture_feats(model, "2") as cap:
        model(torch.randn(1, 3, 4, 4))
        model(torch.randn(3, 3, 6, 2))
    assert cap.feats.shape == (3, 6, 6, 2)


def test_hook_removed_when_the_block_raises():
    model = small_model()
    with pytest.raises(RuntimeError, match="boom"):
        with sgc_fast.capture_feats(model, "2"):
            model(torch.randn(1, 3, 4, 4))
            raise RuntimeError("boom")
    assert all_hooks(model) == 0


def test_hook_removed_when_the_forward_raises():
    model = small_model()
    with pytest.raises(RuntimeError):
        with sgc_fast.capture_feats(model, "2"):
            model(torch.randn(1, 5, 4, 4))  # wrong channel count: the first conv raises
    assert all_hooks(model) == 0


def test_non_tensor_output_raises_and_cleans_up():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    model = nn.Sequential(nn.Identity(), Pair())
    with pytest.raises(TypeError, match="layer"):
        with sgc_fast.capture_feats(model, "1"):
            model(torch.randn(2, 3))
    assert all_hooks(model) == 0


@pytest.mark.parametrize("layer", ["layer9", "2.7", "0.weight", "2..0"])
def test_bad_layer_name(layer):
    model = small_model()
    with pytest.raises((ValueError, TypeError)) as info:
        with sgc_fast.capture_feats(model, layer):
            pass
    assert "layer" in str(info.value) and "\n" not in str(info.value)
    assert all_hooks(model) == 0


def test_bad_layer_name_is_value_error():
    with pytest.raises(ValueError, match=r"^layer: .*layer9"):
        with sgc_fast.capture_feats(small_model(), "layer9"):
            pass


def test_no_leak_over_many_iterations():
    """200 capture/forward/backward rounds: the record and its tensors die with the last reference, and
    neither hooks nor live tensors nor Captured records accumulate."""
    model = small_model()
    x = torch.randn(2, 3, 7, 5)

    def one_round():
        with sgc_fast.capture_feats(model, "2") as cap:
            logits = model(x)
        grads = sgc_fast.target_grads(logits, cap.feats, logits.argmax(1))
        loss = sgc_fast.batched_cam(cap.feats, grads).sum()
        loss.backward()
        return weakref.ref(cap.feats), cap

    for _ in range(5):  # warm-up: lazily created module state, caches
        one_round()
    model.zero_grad()
    gc.collect()
    tensors_before, records_before = live()
    gc.disable()  # reference counting alone must free everything: no cycles through the hook
    try:
        for _ in range(200):
            feats_ref, cap = one_round()
            del cap
            assert feats_ref() is None, "the captured feats outlive their record"
            assert all_hooks(model) == 0
    finally:
        gc.enable()
    model.zero_grad()
    gc.collect()
    tensors_after, records_after = live()
    assert records_after == records_before
    assert tensors_after <= tensors_before
