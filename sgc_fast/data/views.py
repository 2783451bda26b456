"""Per-sample views for SGC / CGC training (upstream spec §2.1, §3.1), reproducible by construction.

Every sample's randomness comes from its own ``torch.Generator`` seeded by ``(seed, epoch, index)``,
so the views of a sample depend neither on the number of DataLoader workers nor on the order in
which samples are drawn, and a run resumed at an epoch boundary sees exactly the same views.

Views of one sample (``S = image_size``, all ``[3, S, S]`` float32, ImageNet-normalised):

- ``xe``: ``RandomResizedCrop(S)`` (scale 0.08-1, ratio 3/4-4/3) of the full image, mirrored with
  p = 0.5 (the cross-entropy view);
- ``orig``: ``Resize(round(S * 256 / 224))`` + ``CenterCrop(S)`` (deterministic; equals
  ``sgc_fast.saliency.transforms.center_view_transform(S)``);
- SGC: ``aug = orig * mask`` (the background becomes 0 in normalised space, i.e. the mean colour, as
  upstream) and ``mask [S, S]`` bool, read by index from a mask cache or computed from ``orig``;
- CGC / L2: ``crop = (top, left, height, width)`` drawn like ``RandomResizedCrop.get_params`` inside
  the ``S x S`` original view; ``aug`` = that box of ``orig`` resized back to ``S x S`` bilinearly
  (align_corners=False, on the normalised tensor, so ``aug`` is exactly
  ``sgc_fast.reference.warp_maps`` applied to ``orig``), mirrored iff ``flip`` is true. Unlike the
  research code (spec §2.1, "flip bug"), the flag is true exactly when the view was mirrored.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset, default_collate

from ..saliency.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_size,
    center_view_mask,
    center_view_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "METHODS",
    "CROP_SCALE",
    "CROP_RATIO",
    "CenterViewDataset",
    "MultiViewDataset",
    "ProviderMasks",
    "GroundTruthMasks",
    "center_size",
    "center_view",
    "collate_views",
    "crop_params",
    "sample_generator",
    "to_normalized",
]

METHODS = ("sgc", "cgc", "l2", "baseline")
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# RandomResizedCrop.get_params: attempts at a random box before the central fallback.
CROP_ATTEMPTS = 10
# Mixes (seed, epoch, index) into one 63-bit generator seed (distinct odd multipliers).
_SEED_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator that drives all random choices of sample ``index`` in ``epoch``."""
    mixed = 0
    for value, mult in zip((seed, epoch, index), _SEED_MIX, strict=True):
        mixed = ((mixed ^ (int(value) & 0xFFFFFFFFFFFFFFFF)) * mult) & 0xFFFFFFFFFFFFFFFF
    return torch.Generator().manual_seed(mixed >> 1)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return float(torch.empty(1, dtype=torch.float64).uniform_(lo, hi, generator=g))


def crop_params(height: int, width: int, g: torch.Generator, scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """``RandomResizedCrop.get_params`` driven by ``g``: ``(top, left, h, w)`` inside ``height x width``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_ATTEMPTS):
        target_area = area * _uniform(g, scale[0], scale[1])
        aspect = math.exp(_uniform(g, log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return top, left, h, w
    # Fallback: the central crop with the ratio clamped into range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _coin(g: torch.Generator) -> bool:
    return bool(torch.rand(1, generator=g) < 0.5)


def to_normalized(img) -> torch.Tensor:
    """PIL image (or ``[3, H, W]`` float tensor in [0, 1]) -> ImageNet-normalised float32 tensor."""
    x = TF.to_tensor(img) if isinstance(img, Image.Image) else img
    return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def center_view(image_size: int):
    """The original-view transform, :func:`sgc_fast.saliency.transforms.center_view_transform` (the one
    the mask cache is built with)."""
    return center_view_transform(image_size)


def _crop_view(orig: torch.Tensor, crop: tuple[int, int, int, int], flip: bool) -> torch.Tensor:
    """The CGC view: box ``crop`` of ``orig [3, S, S]`` resized to ``S x S`` (bilinear, align_corners=False,
    no antialias: the box is never larger than the image), mirrored iff ``flip``."""
    top, left, h, w = crop
    S = orig.shape[-1]
    patch = orig[None, :, top:top + h, left:left + w]
    out = F.interpolate(patch, size=(S, S), mode="bilinear", align_corners=False)[0]
    return out.flip(-1) if flip else out


class ProviderMasks:
    """Masks computed per sample from the original view by a saliency provider (slow path: a network or
    filter runs inside the loader; kept for comparison and for datasets without a cache).

    ``provider(images [B, 3, S, S] normalised) -> bool [B, S, S]``.
    """

    def __init__(self, provider: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.provider = provider

    def __call__(self, orig: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.as_tensor(self.provider(orig[None]))[0].bool()


class GroundTruthMasks:
    """Object masks of a dataset with ``object_mask(i) -> bool [H, W]`` (e.g. ``SyntheticShapes``), mapped
    into the original-view frame by the same Resize + CenterCrop (nearest neighbour)."""

    def __init__(self, base, image_size: int) -> None:
        if not hasattr(base, "object_mask"):
            raise ValueError(f"--saliency ground-truth: {type(base).__name__} has no object_mask(i)")
        self.base, self.image_size = base, int(image_size)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> np.ndarray:
        mask = self.base.object_mask(index)
        return center_view_mask(mask, self.image_size)


_REPORTED: set[str] = set()  # undecodable files already reported by this process


class MultiViewDataset(Dataset):
    """Wraps a dataset of ``(PIL image, int)`` and returns the training views of ``method`` as a dict.

    Keys: ``index`` (int64 scalar, index into ``base``), ``target`` (int64); ``xe [3,S,S]``; and, unless
    ``method == "baseline"``, ``orig``, ``aug`` (``[3,S,S]``) plus ``mask [S,S]`` bool (sgc) or
    ``crop [4]`` int64 and ``flip`` bool (cgc, l2).

    Args:
        base: the dataset; ``base[i] -> (PIL RGB image, class index)``.
        method: ``"sgc" | "cgc" | "l2" | "baseline"``.
        image_size: ``S``.
        masks: SGC only. Either indexable by the base index (``masks[i] -> bool [S, S]``, e.g. a
            ``MaskCache`` or :class:`GroundTruthMasks`) or a :class:`ProviderMasks`.
        indices: optional subset of base indices (``--limit``); masks stay keyed by the base index.
        seed: run seed; call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, base, method: str, image_size: int, masks=None, indices: Sequence[int] | None = None,
                 seed: int = 0) -> None:
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        if method == "sgc" and masks is None:
            raise ValueError("masks: method 'sgc' needs saliency masks (a mask cache, ground truth or a provider)")
        if int(image_size) < 8:
            raise ValueError(f"image_size: expected >= 8, got {image_size}")
        self.base, self.method, self.image_size, self.masks = base, method, int(image_size), masks
        self.indices = list(range(len(base))) if indices is None else [int(i) for i in indices]
        self.seed, self.epoch = int(seed), 0
        self.center = center_view(self.image_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def _mask(self, index: int, orig: torch.Tensor) -> torch.Tensor:
        if isinstance(self.masks, ProviderMasks):
            mask = self.masks(orig)
        else:
            mask = torch.from_numpy(np.ascontiguousarray(np.asarray(self.masks[index]))).bool()
        S = self.image_size
        if mask.shape != (S, S):
            raise ValueError(f"mask of sample {index}: expected shape [{S}, {S}], got {list(mask.shape)} "
                             f"(was the mask cache built for --image-size {S}?)")
        return mask

    #: How many following samples a decode failure may fall through before the error is raised.
    MAX_REPLACEMENTS = 16

    def _decode(self, i: int):
        """``(base index, PIL image, target, replaced)``: an image that fails to decode (a truncated JPEG whose
        header passed the scan) is replaced by the next sample of the list, counted in ``replaced`` and reported
        once per file; the batch keeps its size (equal per-rank batches under torchrun)."""
        for k in range(self.MAX_REPLACEMENTS + 1):
            index = self.indices[(i + k) % len(self.indices)]
            try:
                img, target = self.base[index]
                return index, img, target, k
            except OSError as exc:
                bad = str(exc).split(":")[0]
                if bad not in _REPORTED:
                    _REPORTED.add(bad)
                    warnings.warn(f"skipping an image that cannot be decoded: {exc}", stacklevel=2)
        raise OSError(f"{self.MAX_REPLACEMENTS + 1} images in a row from sample {i} cannot be decoded; is the data "
                      f"set damaged? (rebuild with the full check: --image-check full)")

    def __getitem__(self, i: int) -> dict:
        index, img, target, replaced = self._decode(i)
        img = img.convert("RGB") if img.mode != "RGB" else img
        g = sample_generator(self.seed, self.epoch, index)
        S = self.image_size
        top, left, h, w = crop_params(img.height, img.width, g)
        xe = TF.resized_crop(img, top, left, h, w, [S, S], interpolation=TF.InterpolationMode.BILINEAR,
                             antialias=True)
        if _coin(g):
            xe = TF.hflip(xe)
        out = {"index": torch.tensor(index), "target": torch.tensor(int(target)), "xe": to_normalized(xe),
               "replaced": torch.tensor(replaced > 0)}
        if self.method == "baseline":
            return out
        orig = self.center(img)
        out["orig"] = orig
        if self.method == "sgc":
            mask = self._mask(index, orig)
            out["aug"] = orig * mask.to(orig.dtype)
            out["mask"] = mask
        else:
            crop = crop_params(S, S, g)
            flip = _coin(g)
            out["aug"] = _crop_view(orig, crop, flip)
            out["crop"] = torch.tensor(crop, dtype=torch.int64)
            out["flip"] = torch.tensor(flip)
        return out


def collate_views(samples: list[dict]) -> dict:
    """Stack a list of :class:`MultiViewDataset` samples: ``crop`` int64 ``[B, 4]``, ``flip`` bool ``[B]``,
    ``mask`` bool ``[B, S, S]``, views ``[B, 3, S, S]``, ``target``/``index`` int64 ``[B]``."""
    return default_collate(samples)


class CenterViewDataset(Dataset):
    """Validation view of a ``(PIL image, int)`` dataset: ``(orig [3, S, S], target)``."""

    def __init__(self, base, image_size: int, indices: Sequence[int] | None = None) -> None:
        self.base, self.center = base, center_view(int(image_size))
        self.indices = list(range(len(base))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, target = self.base[self.indices[i]]
        return self.center(img.convert("RGB") if img.mode != "RGB" else img), int(target)
