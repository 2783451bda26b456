"""sgc_fast.CAM: parity with pytorch-grad-cam, captum and torchcam on torchvision models (raw maps, before
their own normalisation and resizing), the closed form against autograd, differentiability, wrappers
(torch.compile, DDP, channels_last, autocast), hooks and memory, and errors."""

from __future__ import annotations

import gc
import tempfile
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import sgc_fast

pytestmark = pytest.mark.usefixtures("one_thread")

# (torchvision model, target layer, the head form CAM must pick in eval mode)
MODELS = [
    ("resnet18", "layer4", "linear"),
    ("efficientnet_b0", "features", "linear"),
    ("mobilenet_v3_small", "features", "autograd"),  # avgpool -> Linear -> Hardswish -> Linear
    ("convnext_tiny", "features", "autograd"),  # avgpool -> LayerNorm2d -> Linear
]
SIZE = 96


def make_model(name: str, num_classes: int = 10) -> nn.Module:
    # Fixed weights, and fixed images drawn after them: some random draws give all-zero CAMs (a degenerate case
    # the parity tests refuse), so each test is the same problem whatever the per-test seed.
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=num_classes).eval()
    with torch.no_grad():  # mostly positive head weights: the relu rarely zeroes a whole CAM
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.uniform_(-0.3, 1.0).div_(m.in_features**0.5)
    return model


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def oracle(model, layer, images, targets, kind):
    """The CAM as the research code computes it: hook, forward, autograd.grad, weighted sum, relu."""
    box = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: box.append(o))
    try:
        logits = model(images)
    finally:
        handle.remove()
    feats = box[-1]
    (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), feats)
    weights = grads if kind == "hires" else grads.mean((2, 3), keepdim=True)
    return F.relu((weights * feats).sum(1)).detach()


def nondegenerate(maps: torch.Tensor) -> None:
    nonzero = maps.flatten(1).amax(1) > 0
    assert 2 * int(nonzero.sum()) >= len(nonzero), "degenerate case: most CAMs are all zero"


@pytest.mark.parametrize("name,layer,head", MODELS)
@pytest.mark.parametrize("kind", ["hires", "grad"])
def test_matches_autograd_oracle(name, layer, head, kind):
    model = make_model(name)
    images = torch.randn(3, 3, SIZE, SIZE)
    targets = torch.tensor([0, 4, 9])
    cam = sgc_fast.CAM(model, layer, kind)
    got = cam(images, targets)
    assert cam.last_head == head
    want = oracle(model, layer, images, targets, kind)
    nondegenerate(want)
    assert got.shape == want.shape and got.dtype == torch.float32 and not got.requires_grad
    assert relative_error(got, want) < 1e-5
    assert all(p.grad is None for p in model.parameters()), "the extractor wrote .grad into the model"


@pytest.mark.parametrize("name,layer,head", MODELS)
@pytest.mark.parametrize("kind", ["hires", "grad"])
def test_matches_pytorch_grad_cam(name, layer, head, kind):
    """pytorch-grad-cam's own CAM formula (``get_cam_image`` on its recorded activations and gradients, relu)
    before its min-max scaling and cv2 resize."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM, HiResCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = make_model(name)
    images = torch.randn(2, 3, SIZE, SIZE)
    targets = torch.tensor([3, 7])
    target_layer = model.get_submodule(layer)
    with (HiResCAM if kind == "hires" else GradCAM)(model=model, target_layers=[target_layer]) as package:
        wrapped = [ClassifierOutputTarget(int(t)) for t in targets]
        package(input_tensor=images, targets=wrapped)
        # as its compute_cam_per_layer hands them over (detach=True: numpy arrays)
        acts = package.activations_and_grads.activations[0].numpy()
        grads = package.activations_and_grads.gradients[0].numpy()
        raw = package.get_cam_image(images, target_layer, wrapped, acts, grads, False)
    want = torch.from_numpy(np.maximum(raw, 0)).float()
    model.zero_grad(set_to_none=True)
    got = sgc_fast.CAM(model, layer, kind)(images, targets)
    nondegenerate(want)
    assert relative_error(got, want) < 1e-5


@pytest.mark.parametrize("name,layer,head", MODELS)
def test_matches_captum_layer_grad_cam(name, layer, head):
    captum = pytest.importorskip("captum.attr")
    model = make_model(name)
    images = torch.randn(2, 3, SIZE, SIZE)
    targets = torch.tensor([1, 8])
    want = captum.LayerGradCam(model, model.get_submodule(layer)).attribute(
        images, target=targets, relu_attributions=True
    )[:, 0]
    got = sgc_fast.CAM(model, layer, "grad")(images, targets)
    nondegenerate(want)
    assert relative_error(got, want.detach()) < 1e-5


@pytest.mark.parametrize("name,layer,head", MODELS[:2])
def test_matches_torchcam(name, layer, head):
    methods = pytest.importorskip("torchcam.methods")
    model = make_model(name)
    images = torch.randn(2, 3, SIZE, SIZE)
    targets = [2, 5]
    with methods.GradCAM(model, layer) as extractor:
        scores = model(images)
        (want,) = extractor(targets, scores, normalized=False)
    got = sgc_fast.CAM(model, layer, "grad")(images, targets)
    nondegenerate(want)
    assert relative_error(got, want.detach()) < 1e-5


def test_closed_form_equals_autograd_and_trains_the_same():
    """head='linear' vs head='autograd' with create_graph: same maps, same parameter gradients."""
    model = make_model("resnet18").train()
    images = torch.randn(4, 3, SIZE, SIZE)
    grads = {}
    for head in ("linear", "autograd"):
        torch.manual_seed(0)  # batch-norm statistics: the same batch, the same state
        model.zero_grad(set_to_none=True)
        cam = sgc_fast.CAM(model, "layer4", head=head)
        maps = cam(images, targets=torch.tensor([0, 1, 2, 3]), create_graph=True, size="input")
        assert maps.requires_grad and cam.last_head == head
        (maps * torch.linspace(0, 1, SIZE)).sum().backward()
        grads[head] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads[head]["maps"] = maps.detach()
    assert grads["linear"].keys() == grads["autograd"].keys()
    assert "fc.weight" in grads["linear"] and "conv1.weight" in grads["linear"]
    for key in grads["linear"]:
        assert relative_error(grads["linear"][key], grads["autograd"][key]) < 1e-4, key


def test_predicted_targets_int_targets_size_and_normalize():
    model = make_model("resnet18")
    images = torch.randn(3, 3, SIZE, SIZE)
    cam = sgc_fast.CAM(model)
    maps, logits = cam(images, return_logits=True)
    assert torch.equal(maps, cam(images, logits.argmax(1)))
    assert torch.equal(cam(images, 4), cam(images, [4, 4, 4]))
    assert torch.equal(cam(images, np.array([1, 2, 3])), cam(images, torch.tensor([1, 2, 3])))
    up = cam(images, size="input")
    assert up.shape == (3, SIZE, SIZE)
    want = F.interpolate(maps[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(up, want)
    assert cam(images, size=(30, 20)).shape == (3, 30, 20) and cam(images, size=16).shape == (3, 16, 16)
    unit = cam(images, size="input", normalize=True)
    assert torch.allclose(unit.flatten(1).amax(1), torch.ones(3)) and (unit.flatten(1).amin(1) == 0).all()
    zero = sgc_fast.CAM(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)), "0")
    zero.model(images)
    with torch.no_grad():
        zero.model[3].weight.zero_()
    assert torch.equal(zero(images, normalize=True), torch.zeros(3, SIZE - 2, SIZE - 2))


def test_channels_last_and_autocast():
    model = make_model("resnet18")
    images = torch.randn(2, 3, SIZE, SIZE)
    want = sgc_fast.CAM(model)(images, [1, 2])
    model_cl = model.to(memory_format=torch.channels_last)
    got = sgc_fast.CAM(model_cl)(images.to(memory_format=torch.channels_last), [1, 2])
    assert relative_error(got, want) < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cam = sgc_fast.CAM(model)
        low = cam(images, [1, 2])
    assert cam.last_head == "linear" and low.dtype == torch.float32 and torch.isfinite(low).all()
    assert relative_error(low, want) < 0.1


def test_compiled_model():
    """A torch.compile'd model: hooks added after compiling are invisible to its code, so CAM traces its own
    compiled extractor; the maps equal the eager ones, with and without create_graph."""
    model = make_model("resnet18")
    images = torch.randn(2, 3, SIZE, SIZE)
    want = sgc_fast.CAM(model)(images, [3, 4])
    compiled = torch.compile(model)
    compiled(images)  # compiled before the CAM sees it
    cam = sgc_fast.CAM(compiled, "_orig_mod.layer4")
    assert relative_error(cam(images, [3, 4]), want) < 1e-5 and cam._fx is not None
    maps = cam(images, [3, 4], create_graph=True)
    assert maps.requires_grad and relative_error(maps.detach(), want) < 1e-5
    maps.sum().backward()
    assert model.fc.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    assert relative_error(sgc_fast.CAM(compiled, "layer4", head="autograd")(images, [3, 4]), want) < 1e-5


def test_ddp_wrapped_model():
    import torch.distributed as dist

    model = make_model("resnet18")
    images = torch.randn(2, 3, SIZE, SIZE)
    want = sgc_fast.CAM(model)(images, [0, 9])
    with tempfile.NamedTemporaryFile() as store:
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
        try:
            wrapped = nn.parallel.DistributedDataParallel(model)
            for layer in ("layer4", "module.layer4", model.layer4):
                assert torch.equal(sgc_fast.CAM(wrapped, layer)(images, [0, 9]), want)
            maps = sgc_fast.CAM(wrapped, "layer4", head="autograd")(images, [0, 9], create_graph=True)
            maps.sum().backward()
            assert model.conv1.weight.grad.abs().sum() > 0
        finally:
            dist.destroy_process_group()


class TokenNet(nn.Module):
    """A transformer-like model: patch tokens [B, N, D], a mean-pooled token head."""

    def __init__(self, dim: int = 16, patch: int = 8, num_classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.blocks = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
        return self.head(self.blocks(tokens).mean(1))


def tokens_to_map(t: torch.Tensor) -> torch.Tensor:
    B, N, D = t.shape
    side = int(N**0.5)
    return t.transpose(1, 2).reshape(B, D, side, side)


def test_reshape_for_token_models_takes_the_closed_form():
    torch.manual_seed(0)  # a random TokenNet can have all-zero CAMs (checked below): fixed weights and images
    model = TokenNet().eval()
    images = torch.randn(3, 3, 32, 32)
    cam = sgc_fast.CAM(model, "blocks", reshape=tokens_to_map)
    got = cam(images, [0, 1, 2])
    assert cam.last_head == "linear" and got.shape == (3, 4, 4)
    auto = sgc_fast.CAM(model, "blocks", reshape=tokens_to_map, head="autograd")(images, [0, 1, 2])
    assert relative_error(got, auto) < 1e-5
    again = cam(images, [0, 1, 2])  # the no_grad forward of a head seen to be GAP + Linear, through reshape
    assert cam.last_head == "linear" and relative_error(again, auto) < 1e-5
    nondegenerate(auto)


def test_hooks_removed_and_nothing_kept():
    model = make_model("resnet18")
    images = torch.randn(2, 3, SIZE, SIZE)
    cam = sgc_fast.CAM(model, "layer4")
    hooks_before = sum(len(m._forward_hooks) for m in model.modules())
    seen = []
    spy = model.layer4.register_forward_hook(lambda m, i, o: seen.append(weakref.ref(o)))
    for i in range(20):
        cam(images, create_graph=bool(i % 2))
    with pytest.raises(ValueError, match="targets"):
        cam(images, targets=[0, 99])
    spy.remove()
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before
    gc.collect()
    assert all(ref() is None for ref in seen), "an activation outlived its call"

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model.fc = nn.Sequential(Boom())
    with pytest.raises(RuntimeError, match="boom"):
        cam(images)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before
    assert torch.is_grad_enabled()
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="boom"):
            cam(images)
        assert not torch.is_grad_enabled(), "the grad mode of the caller was not restored"


def test_inplace_op_after_the_layer():
    """DenseNet applies relu in place to its 'features' output: the recorded activations must not change."""
    model = make_model("densenet121")
    images = torch.randn(2, 3, SIZE, SIZE)
    targets = torch.tensor([0, 1])
    cam = sgc_fast.CAM(model, "features")
    got = cam(images, targets)
    assert cam.last_head == "autograd"
    box = []
    handle = model.features.register_forward_hook(lambda m, i, o: box.append(o.clone()))
    logits = model(images)
    handle.remove()
    feats = box[0].requires_grad_()
    head = torch.flatten(F.adaptive_avg_pool2d(F.relu(feats), 1), 1)
    (grads,) = torch.autograd.grad(model.classifier(head).gather(1, targets[:, None]).sum(), feats)
    assert torch.allclose(model.classifier(head), logits, atol=1e-5)
    want = F.relu((grads * feats).sum(1)).detach()
    nondegenerate(want)
    assert relative_error(got, want) < 1e-5


def test_errors_name_the_argument():
    model = make_model("resnet18")
    images = torch.randn(2, 3, SIZE, SIZE)
    with pytest.raises(TypeError, match="model"):
        sgc_fast.CAM("resnet18")
    with pytest.raises(ValueError, match="kind"):
        sgc_fast.CAM(model, "layer4", "eigen")
    with pytest.raises(ValueError, match="head"):
        sgc_fast.CAM(model, "layer4", head="closed")
    with pytest.raises(ValueError, match="target_layer.*layer9"):
        sgc_fast.CAM(model, "layer9")
    with pytest.raises(ValueError, match="target_layer"):
        sgc_fast.CAM(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="reshape"):
        sgc_fast.CAM(model, reshape=3)
    cam = sgc_fast.CAM(model)
    with pytest.raises(TypeError, match="images"):
        cam([1, 2])
    with pytest.raises(ValueError, match="images"):
        cam(images[:0])
    for bad in ([0], [0, 10], [-1, 0], torch.tensor([[0, 1]])):
        with pytest.raises(ValueError, match="targets"):
            cam(images, bad)
    for bad in (1.5, [0.0, 1.0], "cat", True):
        with pytest.raises((TypeError, ValueError), match="targets"):
            cam(images, bad)
    with pytest.raises(ValueError, match="targets"):
        cam(images, 10)
    for bad in ("full", 0, (2,), (4, -1), (4.0, 4)):
        with pytest.raises(ValueError, match="size"):
            cam(images, size=bad)
    with pytest.raises(ValueError, match="head"):
        sgc_fast.CAM(make_model("convnext_tiny"), "features", head="linear")(images)
    with pytest.raises(ValueError, match="target_layer.*reshape"):
        sgc_fast.CAM(TokenNet(), "blocks")(torch.randn(2, 3, 32, 32))
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.extra = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.used(x).mean((2, 3))

    with pytest.raises(RuntimeError, match="target_layer.*did not run"):
        sgc_fast.CAM(Unused(), "extra")(images)


def test_head_change_between_calls_falls_back_to_autograd():
    """The no_grad fast path is only a guess from the last call: a head that stops being GAP + Linear is caught
    by the per-batch check and the batch is redone through autograd."""
    model = make_model("resnet18")
    images = torch.randn(2, 3, SIZE, SIZE)
    cam = sgc_fast.CAM(model)
    cam(images, [1, 2])
    assert cam.last_head == "linear"
    model.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    got = sgc_fast.CAM(model)(images, torch.tensor([1, 2]))
    assert relative_error(got, oracle(model, "layer4", images, torch.tensor([1, 2]), "hires")) < 1e-5
    assert sgc_fast.CAM(model).last_head is None
    cam(images, [1, 2])
    assert cam.last_head == "autograd"


def test_without_create_graph_the_backbone_records_no_graph():
    """The memory of the extractor: the backbone never records autograd state; after the first call of a GAP +
    Linear model, the head does not either (the whole forward under no_grad)."""
    model = make_model("resnet18")
    images = torch.randn(2, 3, SIZE, SIZE)
    seen = []
    spies = [m.register_forward_hook(lambda m, i, o, n=n: seen.append((n, i[0].requires_grad, o.requires_grad)))
             for n, m in (("layer3", model.layer3), ("fc", model.fc))]
    cam = sgc_fast.CAM(model)
    for _ in range(3):
        cam(images)
    cam(images, create_graph=True)
    for h in spies:
        h.remove()
    assert seen[0] == ("layer3", False, False) and seen[1][0] == "fc"  # first call: backbone without a graph
    assert seen[2:6] == [("layer3", False, False), ("fc", False, False)] * 2  # then nothing at all
    assert seen[6:] == [("layer3", True, True), ("fc", True, True)]  # create_graph: the whole graph
    with torch.no_grad():
        assert cam(images, create_graph=True).requires_grad
