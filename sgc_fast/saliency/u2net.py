"""U²-Net salient-object detector (Qin et al., "U²-Net: Going Deeper with Nested U-Structure for
Salient Object Detection", Pattern Recognition 106, 2020), written from the paper's architecture.

Structure:

- ``ConvBNReLU``: 3×3 convolution (dilation d, padding d) → BatchNorm → ReLU.
- ``RSU`` (residual U-block, RSU-L for L = 7, 6, 5, 4): an input conv ``in → out``, then a small U-Net
  on ``out`` channels with ``mid`` channels inside: L-1 encoder convs separated by 2×2 max pools
  (ceil mode), one dilated (d=2) bottom conv, L-1 decoder convs each fed the concatenation of the
  upsampled deeper map and the encoder skip; the block returns ``decoder output + input conv``.
- ``RSUDilated`` (RSU-4F): the same without pooling; resolution is kept and the receptive field grows
  by dilation 1, 2, 4, 8 (encoder) and 4, 2, 1 (decoder).
- ``U2Net``: six encoder stages (RSU-7, 6, 5, 4, 4F, 4F) joined by max pools, five decoder stages
  (4F, 4, 5, 6, 7), a 3×3 side conv on the last encoder stage and on every decoder stage (six side
  maps, upsampled to the input size) and a 1×1 fusion conv over the six side maps.

Upsampling is bilinear to the exact size of the skip connection (align_corners=False), so any input
size works. Module attribute names follow the official release (``stage1 … stage6``, ``stage5d …
stage1d``, ``side1 … side6``, ``outconv``; inside a block ``rebnconvin``, ``rebnconv1 …``,
``rebnconv1d …``; inside a conv ``conv_s1``, ``bn_s1``), so the published ``u2net.pth`` (full,
~44.0 M parameters) and ``u2netp.pth`` (small, ~1.13 M) load with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBNReLU", "RSU", "RSUDilated", "U2Net", "u2net_full", "u2net_small"]

# (block, in_ch, mid_ch, out_ch) per stage; "7"…"4" are RSU depths, "4F" the dilated RSU-4F.
FULL_STAGES = {
    "stage1": ("7", 3, 32, 64),
    "stage2": ("6", 64, 32, 128),
    "stage3": ("5", 128, 64, 256),
    "stage4": ("4", 256, 128, 512),
    "stage5": ("4F", 512, 256, 512),
    "stage6": ("4F", 512, 256, 512),
    "stage5d": ("4F", 1024, 256, 512),
    "stage4d": ("4", 1024, 128, 256),
    "stage3d": ("5", 512, 64, 128),
    "stage2d": ("6", 256, 32, 64),
    "stage1d": ("7", 128, 16, 64),
}
SMALL_STAGES = {
    "stage1": ("7", 3, 16, 64),
    "stage2": ("6", 64, 16, 64),
    "stage3": ("5", 64, 16, 64),
    "stage4": ("4", 64, 16, 64),
    "stage5": ("4F", 64, 16, 64),
    "stage6": ("4F", 64, 16, 64),
    "stage5d": ("4F", 128, 16, 64),
    "stage4d": ("4", 128, 16, 64),
    "stage3d": ("5", 128, 16, 64),
    "stage2d": ("6", 128, 16, 64),
    "stage1d": ("7", 128, 16, 64),
}
ENCODER = ("stage1", "stage2", "stage3", "stage4", "stage5", "stage6")
DECODER = ("stage5d", "stage4d", "stage3d", "stage2d", "stage1d")
# Side outputs, finest first: side1 reads stage1d, …, side5 reads stage5d, side6 reads stage6.
SIDE_SOURCES = ("stage1d", "stage2d", "stage3d", "stage4d", "stage5d", "stage6")
RSU_DILATIONS_4F = (1, 2, 4, 8)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


def _upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Module):
    """3×3 conv (dilation ``dilation``, same padding) → BatchNorm → ReLU: ``[B, in, H, W] → [B, out, H, W]``."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block RSU-``depth``: ``[B, in, H, W] → [B, out, H, W]``."""

    def __init__(self, depth: int, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"depth: expected >= 3, got {depth}")
        self.depth = depth
        self.rebnconvin = ConvBNReLU(in_ch, out_ch)
        self.add_module("rebnconv1", ConvBNReLU(out_ch, mid_ch))
        for level in range(2, depth):
            self.add_module(f"rebnconv{level}", ConvBNReLU(mid_ch, mid_ch))
        self.add_module(f"rebnconv{depth}", ConvBNReLU(mid_ch, mid_ch, dilation=2))
        for level in range(depth - 1, 1, -1):
            self.add_module(f"rebnconv{level}d", ConvBNReLU(2 * mid_ch, mid_ch))
        self.add_module("rebnconv1d", ConvBNReLU(2 * mid_ch, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = self.rebnconvin(x)
        skips = []
        h = top
        for level in range(1, self.depth):
            if level > 1:
                h = _pool(h)
            h = getattr(self, f"rebnconv{level}")(h)
            skips.append(h)
        h = getattr(self, f"rebnconv{self.depth}")(h)
        for level in range(self.depth - 1, 0, -1):
            skip = skips[level - 1]
            if h.shape[-2:] != skip.shape[-2:]:
                h = _upsample_to(h, skip)
            h = getattr(self, f"rebnconv{level}d")(torch.cat((h, skip), 1))
        return h + top


class RSUDilated(nn.Module):
    """RSU-4F: the RSU-4 layout with dilations instead of pooling: ``[B, in, H, W] → [B, out, H, W]``."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        d1, d2, d3, d4 = RSU_DILATIONS_4F
        self.rebnconvin = ConvBNReLU(in_ch, out_ch)
        self.rebnconv1 = ConvBNReLU(out_ch, mid_ch, d1)
        self.rebnconv2 = ConvBNReLU(mid_ch, mid_ch, d2)
        self.rebnconv3 = ConvBNReLU(mid_ch, mid_ch, d3)
        self.rebnconv4 = ConvBNReLU(mid_ch, mid_ch, d4)
        self.rebnconv3d = ConvBNReLU(2 * mid_ch, mid_ch, d3)
        self.rebnconv2d = ConvBNReLU(2 * mid_ch, mid_ch, d2)
        self.rebnconv1d = ConvBNReLU(2 * mid_ch, out_ch, d1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = self.rebnconvin(x)
        h1 = self.rebnconv1(top)
        h2 = self.rebnconv2(h1)
        h3 = self.rebnconv3(h2)
        h = self.rebnconv4(h3)
        h = self.rebnconv3d(torch.cat((h, h3), 1))
        h = self.rebnconv2d(torch.cat((h, h2), 1))
        h = self.rebnconv1d(torch.cat((h, h1), 1))
        return h + top


def _block(kind: str, in_ch: int, mid_ch: int, out_ch: int) -> nn.Module:
    if kind == "4F":
        return RSUDilated(in_ch, mid_ch, out_ch)
    return RSU(int(kind), in_ch, mid_ch, out_ch)


class U2Net(nn.Module):
    """U²-Net. ``forward(x [B, in_ch, H, W])`` returns seven probability maps ``[B, out_ch, H, W]``:
    the fused output first (``sigmoid(d0)``, the one used for masks), then the six side outputs,
    finest first.

    Args:
        small: ``False`` → the full model (``u2net.pth``), ``True`` → U²-Net† (``u2netp.pth``).
        in_ch, out_ch: input / output channels (3 and 1 for the published weights).
    """

    def __init__(self, small: bool = False, in_ch: int = 3, out_ch: int = 1) -> None:
        super().__init__()
        self.small = bool(small)
        stages = SMALL_STAGES if small else FULL_STAGES
        for name, (kind, cin, mid, cout) in stages.items():
            self.add_module(name, _block(kind, in_ch if name == "stage1" else cin, mid, cout))
        for i, source in enumerate(SIDE_SOURCES, start=1):
            self.add_module(f"side{i}", nn.Conv2d(stages[source][3], out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(len(SIDE_SOURCES) * out_ch, out_ch, 1)

    def side_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Pre-sigmoid maps ``(d0, d1, …, d6)``, each ``[B, out_ch, H, W]``."""
        feats: dict[str, torch.Tensor] = {}
        h = x
        for i, name in enumerate(ENCODER):
            if i > 0:
                h = _pool(h)
            h = getattr(self, name)(h)
            feats[name] = h
        skips = ENCODER[-2::-1]  # stage5 … stage1
        for name, skip in zip(DECODER, skips, strict=True):
            h = getattr(self, name)(torch.cat((_upsample_to(h, feats[skip]), feats[skip]), 1))
            feats[name] = h
        sides = []
        for i, source in enumerate(SIDE_SOURCES, start=1):
            d = getattr(self, f"side{i}")(feats[source])
            sides.append(d if i == 1 else _upsample_to(d, sides[0]))
        fused = self.outconv(torch.cat(sides, 1))
        return (fused, *sides)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.sigmoid(d) for d in self.side_logits(x))


def u2net_full() -> U2Net:
    """The full U²-Net (~44.0 M parameters; ``u2net.pth``)."""
    return U2Net(small=False)


def u2net_small() -> U2Net:
    """U²-Net† (~1.13 M parameters; ``u2netp.pth``)."""
    return U2Net(small=True)
