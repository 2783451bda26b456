"""The original (centre-crop) view that saliency masks are computed on, shared with training.

``center_view_transform(S)``: PIL image → ``Resize(round(S * 256 / 224))`` of the shorter side
(bilinear, antialiased) → ``CenterCrop(S)`` → ``ToTensor`` → ImageNet ``Normalize``: ``[3, S, S]``
float32. For S = 224 this is the research code's ``Resize(256) + CenterCrop(224)``.

``center_view_mask(mask, S)`` maps a full-image boolean mask (e.g. a data set's ground-truth object
mask) into the same frame with the same resize + crop, nearest neighbour.

``center_view_params(S)`` is the dictionary that identifies this transform in mask-cache keys.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "center_size",
    "center_view_mask",
    "center_view_params",
    "center_view_transform",
    "denormalize_uint8",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Resize-then-crop ratio of the ImageNet evaluation transform (Resize(256) + CenterCrop(224)).
RESIZE_NUM, RESIZE_DEN = 256, 224


def center_size(image_size: int) -> int:
    """Shorter side before the centre crop: ``round(S * 256 / 224)`` (256 for S = 224)."""
    return int(round(image_size * RESIZE_NUM / RESIZE_DEN))


def center_view_transform(image_size: int) -> T.Compose:
    """PIL image → ImageNet-normalised ``[3, S, S]`` float32 tensor of the centre view."""
    S = int(image_size)
    return T.Compose([
        T.Resize(center_size(S), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(S),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def center_view_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
    """Full-image mask ``bool [H, W]`` → ``bool [S, S]`` in the centre-view frame (nearest neighbour)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask: expected a 2-D [H, W] array, got shape {m.shape}")
    S = int(image_size)
    img = Image.fromarray(m.astype(np.uint8) * 255)
    img = T.functional.resize(img, center_size(S), interpolation=T.InterpolationMode.NEAREST)
    img = T.functional.center_crop(img, [S, S])
    return np.asarray(img) > 127


def center_view_params(image_size: int) -> dict:
    """What identifies the centre-view transform (used in mask-cache keys)."""
    S = int(image_size)
    return {
        "image_size": S,
        "resize": center_size(S),
        "crop": S,
        "interpolation": "bilinear-antialias",
        "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    }


def denormalize_uint8(images: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised ``[B, 3, H, W]`` → ``uint8 [B, H, W, 3]`` RGB (rounded, clipped to 0-255)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected [B, 3, H, W], got {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    x = images.detach().to("cpu", torch.float32) * std + mean
    x = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()
