"""Backbones for training: torchvision ResNets with the classifier sized for the dataset.

Unlike the research scripts (spec §5.1, §5.3, §8 items 5-7) the classifier is sized *before* any
weights are loaded and before the optimiser exists, so it is always trained, a resumed checkpoint
keeps its classifier, and ImageNet weights load into a model with another class count.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..cam import capture_feats, head_grads, plain_name, target_grads, unwrap_model

__all__ = ["ARCHS", "OUTPUT_STRIDES", "build_model", "set_output_stride", "load_weights", "export_state_dict", "forward_feats", "cam_grads",
           "pretrained_path"]

ARCHS = ("resnet18", "resnet50", "resnet18_w32")
# ResNet-18 with 32 base channels (32-64-128-256, a quarter of the FLOPs): for CPU demos; no ImageNet weights.
NARROW = {"resnet18_w32": 32}
OUTPUT_STRIDES = (32, 16)
_PRETRAINED = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
}


def pretrained_path(arch: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``arch`` in the local torch hub cache."""
    if arch not in _PRETRAINED:
        raise ValueError(f"--pretrained: there are no ImageNet weights for {arch}; train it from scratch or pass "
                         f"--weights PATH")
    url = _PRETRAINED[arch].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _plain_keys(state: dict) -> dict:
    for key in ("state_dict", "model"):  # research checkpoints nest under state_dict, ours under model
        if isinstance(state.get(key), dict):
            state = state[key]
    return {plain_name(k): v for k, v in state.items()}


#: Keys of self-supervised heads that a classifier never uses: SwAV's MLP projection head and prototypes.
SSL_HEAD_PREFIXES = ("projection_head.", "prototypes.")
HEAD_KEYS = ("fc.weight", "fc.bias")


def load_weights(model: nn.Module, source: str | os.PathLike | dict, log=print, require_head: bool = False) -> None:
    """Load a local state dict (file or dict) into ``model``: ``state_dict``/``model`` nesting and ``module.``
    prefixes are removed; SwAV's ``projection_head.*``/``prototypes.*`` are dropped with a message; a classifier
    of another shape, or none (a backbone-only file such as SwAV's), leaves ``fc`` at its fresh initialisation with
    a message. ``require_head=True`` (evaluation) refuses both instead: a random classifier is never scored. Any
    other missing or unexpected key, or shape difference, is an error."""
    state = torch.load(source, map_location="cpu", weights_only=True) if not isinstance(source, dict) else source
    if not isinstance(state, dict):
        raise ValueError(f"weights: {source} holds a {type(state).__name__}, expected a state dict")
    state = _plain_keys(state)
    name = source if not isinstance(source, dict) else "state dict"
    dropped = sorted(k for k in state if k.startswith(SSL_HEAD_PREFIXES))
    if dropped:
        log(f"weights: {name}: dropping {len(dropped)} self-supervised head tensors ({dropped[0]}, ...): not part of "
            f"a classifier")
        state = {k: v for k, v in state.items() if k not in dropped}
    own = model.state_dict()
    skipped = [k for k in HEAD_KEYS if k in state and k in own and state[k].shape != own[k].shape]
    if skipped:
        if require_head:
            raise ValueError(f"weights: {name} has a classifier of shape {list(state['fc.weight'].shape)}, the model "
                             f"needs {list(own['fc.weight'].shape)}: it cannot be evaluated (another data set?)")
        log(f"weights: skipping classifier {skipped} (shape {list(state['fc.weight'].shape)} in the file, "
            f"{list(own['fc.weight'].shape)} in the model): it keeps its fresh initialisation")
        state = {k: v for k, v in state.items() if k not in skipped}
    wrong = [f"{k} {list(v.shape)} (model {list(own[k].shape)})" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"weights: {name} does not fit the model: shapes differ for {wrong[:4]}"
                         f"{f' and {len(wrong) - 4} more' if len(wrong) > 4 else ''} (another --arch?)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    headless = [k for k in missing if k in HEAD_KEYS and k not in skipped]
    if headless:
        if require_head:
            raise ValueError(f"weights: {name} has no classifier ({', '.join(headless)} missing): a backbone-only "
                             f"file cannot be evaluated; fine-tune it first")
        log(f"weights: {name} has no classifier: a new fc of {list(own['fc.weight'].shape)} is trained from its "
            f"fresh initialisation")
    missing = [k for k in missing if k not in HEAD_KEYS]
    if missing or unexpected:
        raise ValueError(f"weights: {name} does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}")


def set_output_stride(model: nn.Module, output_stride: int) -> nn.Module:
    """Make a torchvision ResNet's layer4 keep layer3's resolution (``output_stride=16``): the stride-2
    convolutions of ``layer4[0]`` (3x3 and the 1x1 shortcut) get stride 1, so layer4 — the CAM layer —
    is ``S/16`` instead of ``S/32`` on a side (7x7 at 112 px, the grid of a standard 224-px run). No
    parameter changes shape, so weights load either way. ``32`` leaves the model as it is."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride: expected one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if output_stride == 16:
        if not isinstance(model, torchvision.models.ResNet):
            raise ValueError(f"output_stride: 16 needs a torchvision ResNet, got {type(model).__name__}")
        for module in model.layer4[0].modules():
            if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                module.stride = (1, 1)
    return model


def _narrow_resnet18(width: int, num_classes: int) -> nn.Module:
    """A torchvision ResNet-18 whose stages have ``width``, 2, 4 and 8 x ``width`` channels (64 is the
    standard network), initialised as torchvision initialises its ResNets."""
    from torchvision.models.resnet import BasicBlock

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    for k, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
        setattr(model, name, model._make_layer(BasicBlock, width << k, 2, stride=1 if k == 0 else 2))
    model.fc = nn.Linear(8 * width, num_classes)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def build_model(arch: str, num_classes: int, pretrained: bool = False, weights: str | os.PathLike | None = None,
                log=print, output_stride: int = 32, require_head: bool = False) -> nn.Module:
    """``torchvision.models.<arch>(num_classes=num_classes)``, optionally initialised from the ImageNet
    weights in the local hub cache (``pretrained``; never downloaded) or from a local file (``weights``);
    ``output_stride=16`` removes layer4's downsampling (:func:`set_output_stride`)."""
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {ARCHS}, got {arch!r}")
    if arch in NARROW:
        model = _narrow_resnet18(NARROW[arch], num_classes)
    else:
        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    model = set_output_stride(model, output_stride)
    if pretrained:
        path = pretrained_path(arch)
        if not path.is_file():
            raise FileNotFoundError(
                f"--pretrained: {path} not found. sgc-train never downloads; fetch it once on a connected "
                f"machine with `python -c \"import torchvision; torchvision.models.{arch}(weights='IMAGENET1K_V1')\"` "
                f"(or copy {os.path.basename(path)} into {path.parent}, or pass --weights PATH)")
        load_weights(model, path, log=log)
    if weights is not None:
        load_weights(model, weights, log=log, require_head=require_head)
    return model


def export_state_dict(model: nn.Module) -> dict:
    """The model's state dict with plain torchvision keys (no ``module.``/``_orig_mod.``), on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in _plain_keys(model.state_dict()).items()}


def forward_feats(model: nn.Module, images: torch.Tensor, layer: str = "layer4") -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [B, C], feats [B, K, h, w])`` of one view; ``feats`` = ``layer``'s output."""
    net = unwrap_model(model)
    if isinstance(net, torchvision.models.ResNet) and layer == "layer4" and net is model:
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        feats = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return net.fc(torch.flatten(net.avgpool(feats), 1)), feats
    with capture_feats(net, layer) as cap:
        logits = model(images)
    return logits, cap.feats


def cam_grads(model: nn.Module, logits: torch.Tensor, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``d logits[b, targets[b]] / d feats``: closed form for a GAP + Linear head (torchvision ResNet),
    autograd (create_graph) otherwise."""
    net = unwrap_model(model)
    if isinstance(net, torchvision.models.ResNet) and isinstance(net.fc, nn.Linear):
        return head_grads(net.fc.weight, feats, targets)
    return target_grads(logits, feats, targets, create_graph=True)
