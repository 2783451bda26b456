"""Saliency masks for SGC: computed once per split, batched, cached on disk, read by index in training.

Public API::

    SaliencyProvider                       name, config() -> dict, needs_images,
                                           __call__(images [B,3,S,S]) -> bool [B,S,S],
                                           masks_for(indices, images) -> bool [B,S,S]
    U2NetProvider(weights, small=False, device=None, threshold=0.5, working_size=None)
    OpenCVStaticProvider(kind="spectral_residual", threshold="otsu")
    GroundTruthProvider(dataset, image_size)
    get_provider(name, *, image_size=None, weights=None, device=None, threshold=None,
                 working_size=None, dataset=None) -> SaliencyProvider
    MaskCache.build(path, image_ids, provider, load_batch_fn, key_extra=None, batch_size=32,
                    progress=True) -> MaskCache
    MaskCache.open(path, expected_key) -> MaskCache;  cache[i] -> np.bool_ [S, S]
    MaskCache.make_key(image_ids=None, provider=None, key_extra=None) -> dict
    cache_key(dataset, image_size) -> dict     the key training checks (ids + transform + data set)
    center_view_transform(S), center_view_params(S), center_view_mask(mask, S)
    U2Net(small=False), minmax_threshold(saliency, threshold=0.5)

Command line: ``sgc-saliency`` / ``python -m sgc_fast.saliency`` (see :mod:`sgc_fast.saliency.cli`).
"""

from __future__ import annotations

from .cache import MaskCache, StaleMaskCacheError, ids_digest
from .providers import (
    GroundTruthProvider,
    OpenCVStaticProvider,
    SaliencyProvider,
    U2NetProvider,
    load_u2net,
    minmax_threshold,
    opencv_saliency_available,
)
from .transforms import center_view_mask, center_view_params, center_view_transform
from .u2net import U2Net

__all__ = [
    "PROVIDERS",
    "GroundTruthProvider",
    "MaskCache",
    "OpenCVStaticProvider",
    "SaliencyProvider",
    "StaleMaskCacheError",
    "U2Net",
    "U2NetProvider",
    "cache_key",
    "center_view_mask",
    "center_view_params",
    "center_view_transform",
    "dataset_signature",
    "get_provider",
    "ids_digest",
    "key_extra",
    "load_u2net",
    "minmax_threshold",
    "opencv_saliency_available",
]

PROVIDERS = ("u2net", "u2netp", "opencv", "opencv-fine-grained", "ground-truth")
# Data-set attributes that change pixels without changing image ids (SyntheticShapes' background cue).
_SIGNATURE_ATTRS = ("bias", "num_classes")


def get_provider(
    name: str,
    *,
    image_size: int | None = None,
    weights: str | None = None,
    device: str | None = None,
    threshold: float | str | None = None,
    working_size: int | None = None,
    dataset=None,
    amp: str | None = None,
) -> SaliencyProvider:
    """Provider by its command-line name (one of :data:`PROVIDERS`); ``threshold=None`` keeps each
    provider's default (0.5 for U²-Net, Otsu for OpenCV)."""
    if name in ("u2net", "u2netp"):
        if weights is None:
            raise ValueError(f"weights: provider {name!r} needs the official {name}.pth file (--weights PATH)")
        return U2NetProvider(weights, small=name == "u2netp", device=device,
                             threshold=0.5 if threshold is None else float(threshold), working_size=working_size,
                             amp=amp)
    if amp is not None:
        raise ValueError(f"amp: only the U²-Net providers run a network, got provider {name!r}")
    if name in ("opencv", "opencv-fine-grained"):
        kind = "fine_grained" if name == "opencv-fine-grained" else "spectral_residual"
        return OpenCVStaticProvider(kind, threshold="otsu" if threshold is None else threshold)
    if name == "ground-truth":
        if dataset is None or image_size is None:
            raise ValueError("provider 'ground-truth' needs dataset= and image_size=")
        return GroundTruthProvider(dataset, image_size)
    raise ValueError(f"provider: expected one of {PROVIDERS}, got {name!r}")


def dataset_signature(dataset) -> dict:
    """What identifies a data set's pixels beyond its image ids: its type, and for SyntheticShapes the
    attributes that change images under the same ids (``bias``, ``num_classes``)."""
    sig = {"type": type(dataset).__name__}
    for attr in _SIGNATURE_ATTRS:
        value = getattr(dataset, attr, None)
        if isinstance(value, int | float | str):
            sig[attr] = value
    return sig


def key_extra(dataset, image_size: int) -> dict:
    """The ``key_extra`` that ``sgc-saliency`` builds caches with: transform + data-set signature."""
    return {"transform": center_view_params(image_size), "dataset": dataset_signature(dataset)}


def cache_key(dataset, image_size: int) -> dict:
    """Key that a mask cache for ``dataset`` (which has ``image_id(i)``) at size ``image_size`` must carry;
    any provider is accepted (the provider section is left out; add it with :meth:`MaskCache.make_key`
    to pin one)."""
    if not callable(getattr(dataset, "image_id", None)):
        raise ValueError(f"dataset: {type(dataset).__name__} has no image_id(i); mask caches are keyed by image ids")
    ids = [dataset.image_id(i) for i in range(len(dataset))]
    return MaskCache.make_key(ids, None, key_extra(dataset, image_size))
