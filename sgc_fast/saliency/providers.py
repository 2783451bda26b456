"""Saliency providers: ImageNet-normalised centre views ``[B, 3, S, S]`` → binary masks ``bool [B, S, S]``.

Every provider has

- ``name``: short identifier (``"u2net"``, ``"u2netp"``, ``"opencv-spectral_residual"``, …);
- ``config() -> dict``: everything that determines its output (goes into mask-cache keys);
- ``needs_images``: ``False`` for providers that read masks from the data set instead;
- ``masks_for(indices, images)``: the one entry point the cache builder uses. Image-based providers
  ignore ``indices`` and return ``self(images)``; :class:`GroundTruthProvider` ignores ``images`` (may
  be ``None``) and looks the indices up;
- ``__call__(images)``: batched, under ``torch.no_grad()``, result on ``images.device``.

Post-processing of the network providers follows the research code (upstream spec §3.1): per-image
min-max normalisation of the saliency map, then ``> threshold``; unlike upstream, a constant map gives
an all-False mask instead of NaN (:func:`minmax_threshold`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .transforms import center_view_mask, denormalize_uint8
from .u2net import U2Net

__all__ = [
    "GroundTruthProvider",
    "OpenCVStaticProvider",
    "SaliencyProvider",
    "U2NetProvider",
    "file_sha256",
    "load_u2net",
    "minmax_threshold",
    "opencv_saliency_available",
]

OPENCV_KINDS = ("spectral_residual", "fine_grained")
OPENCV_INSTALL = "pip install opencv-contrib-python-headless==5.0.0.93"
# Characters of the weight file's SHA-256 kept in the provider config.
DIGEST_CHARS = 16
_HASH_CHUNK = 1 << 22


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a float tensor [B, 3, S, S] (ImageNet-normalised), got {got}")


def minmax_threshold(saliency: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``saliency [B, H, W]`` → ``bool [B, H, W]``: ``(s - min) / (max - min) > threshold`` per image.

    A constant map (``max == min``) gives an all-False mask (upstream divides by zero → NaN → False
    only by accident of the comparison; here it is explicit and no NaN is ever produced).
    """
    if saliency.ndim != 3:
        raise ValueError(f"saliency: expected [B, H, W], got {tuple(saliency.shape)}")
    flat = saliency.float().flatten(1)
    lo = flat.amin(1, keepdim=True)
    rng = flat.amax(1, keepdim=True) - lo
    ok = rng > 0
    norm = torch.where(ok, (flat - lo) / torch.where(ok, rng, torch.ones_like(rng)), torch.zeros_like(flat))
    return (norm > threshold).view_as(saliency)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class SaliencyProvider:
    """Interface (see the module docstring). Subclasses set ``name`` and implement ``config`` and
    ``__call__`` (image-based) or ``masks_for`` (index-based, with ``needs_images = False``)."""

    name: str = "saliency"
    needs_images: bool = True

    def config(self) -> dict:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def masks_for(self, indices: Sequence[int], images: torch.Tensor | None) -> torch.Tensor:
        """Masks ``bool [B, S, S]`` of the samples ``indices`` whose centre views are ``images``."""
        if images is None:
            raise ValueError(f"images: provider {self.name!r} computes masks from images, got None")
        return self(images)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()})"


def load_u2net(weights: str | Path, small: bool = False) -> U2Net:
    """A :class:`U2Net` in eval mode with the official weight file ``weights`` loaded strictly.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the path when the file is missing or its
    parameter names or shapes differ from the model's (a few missing / unexpected / mismatched keys
    are listed). A ``module.`` prefix (DataParallel checkpoints) is stripped.
    """
    path = Path(weights)
    model_name = "u2netp" if small else "u2net"
    if not path.is_file():
        raise FileNotFoundError(f"weights: U²-Net file {str(path)!r} not found (expected the official {model_name}.pth)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights: {str(path)!r} holds a {type(state).__name__}, expected a state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    model = U2Net(small=small)
    own = model.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}  # absent from pre-0.4.1 files
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        def few(items):
            return ", ".join(items[:5]) + (f", … ({len(items)} in all)" if len(items) > 5 else "") if items else "none"

        other = "u2net (small=False)" if small else "u2netp (small=True)"
        raise ValueError(
            f"weights: {str(path)!r} does not match {model_name}: missing keys: {few(missing)}; "
            f"unexpected keys: {few(unexpected)}; shape mismatches: {few(mismatched)}"
            + (f" (is it the {other} file?)" if mismatched else "")
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


class U2NetProvider(SaliencyProvider):
    """U²-Net masks as in the research code: fused output ``sigmoid(d0)`` on the normalised centre
    view, per-image min-max, ``> threshold``.

    Args:
        weights: path of the official ``u2net.pth`` (or ``u2netp.pth`` with ``small=True``).
        small: use U²-Net† (u2netp).
        device: where the network runs (default: CUDA if available, else CPU). Inputs are moved there
            and the masks are returned on the inputs' device.
        threshold: on the min-max-normalised map, strict ``>`` (0.5 upstream).
        working_size: if set, the input is resized (bilinear) to ``working_size × working_size`` and the
            map back to the input size before normalisation; ``None`` (default, as upstream) runs at the
            input size.
        amp: ``None`` (float32, as upstream), ``"bf16"`` or ``"fp16"``: the network runs under autocast (tensor
            cores on a GPU); the map is normalised and thresholded in float32. A pixel near the threshold may
            change side, so the setting is part of the cache key.
    """

    AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(
        self,
        weights: str | Path,
        small: bool = False,
        device: str | torch.device | None = None,
        threshold: float = 0.5,
        working_size: int | None = None,
        amp: str | None = None,
    ) -> None:
        if amp is not None and amp not in self.AMP:
            raise ValueError(f"amp: expected None, 'bf16' or 'fp16', got {amp!r}")
        self.amp = amp
        self.weights = Path(weights)
        self.small = bool(small)
        self.name = "u2netp" if self.small else "u2net"
        self.threshold = float(threshold)
        self.working_size = None if working_size is None else int(working_size)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_u2net(self.weights, small=self.small).to(self.device)
        self.weights_sha256 = file_sha256(self.weights)[:DIGEST_CHARS]

    def config(self) -> dict:
        return {
            "model": self.name,
            "weights_sha256": self.weights_sha256,
            "output": "sigmoid(d0)",
            "normalize": "minmax-per-image",
            "threshold": self.threshold,
            "working_size": self.working_size,
            **({"amp": self.amp} if self.amp else {}),
        }

    def saliency(self, images: torch.Tensor) -> torch.Tensor:
        """Fused saliency probabilities ``[B, S, S]`` float32 on the network's device."""
        _check_images(images)
        x = images.to(self.device, torch.float32)
        size = x.shape[-2:]
        if self.working_size is not None and tuple(size) != (self.working_size,) * 2:
            x = F.interpolate(x, size=(self.working_size,) * 2, mode="bilinear", align_corners=False)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.AMP.get(self.amp, torch.bfloat16),
                                             enabled=self.amp is not None):
            prob = torch.sigmoid(self.model.side_logits(x)[0].float())
        if prob.shape[-2:] != size:
            prob = F.interpolate(prob, size=size, mode="bilinear", align_corners=False)
        return prob[:, 0]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return minmax_threshold(self.saliency(images), self.threshold).to(images.device)


def opencv_saliency_available() -> tuple[bool, str]:
    """``(True, "")`` when ``cv2.saliency`` can be used, else ``(False, reason)``."""
    try:
        import cv2
    except ImportError as e:
        return False, f"cv2 not importable ({e}); install with `{OPENCV_INSTALL}`"
    if not hasattr(cv2, "saliency"):
        return False, (f"cv2 {cv2.__version__} has no cv2.saliency (a plain opencv wheel shadows the contrib one); "
                       f"install `{OPENCV_INSTALL}` after the other requirements")
    return True, ""


class OpenCVStaticProvider(SaliencyProvider):
    """OpenCV static saliency (no weights): ``spectral_residual`` (Hou & Zhang 2007) or ``fine_grained``
    (Montabone & Soto 2010) on the de-normalised uint8 image, min-max to [0, 1], then thresholded with
    Otsu's method (``threshold="otsu"``) or ``> threshold`` (a float in [0, 1]). Runs on the CPU.
    A flat image, or a constant saliency map, gives an all-False mask.
    """

    def __init__(self, kind: str = "spectral_residual", threshold: str | float = "otsu") -> None:
        if kind not in OPENCV_KINDS:
            raise ValueError(f"kind: expected one of {OPENCV_KINDS}, got {kind!r}")
        if not (threshold == "otsu" or isinstance(threshold, int | float)):
            raise ValueError(f"threshold: expected 'otsu' or a float, got {threshold!r}")
        ok, why = opencv_saliency_available()
        if not ok:
            raise ImportError(f"OpenCVStaticProvider: {why}")
        import cv2

        self._cv2 = cv2
        self.kind = kind
        self.threshold = threshold if threshold == "otsu" else float(threshold)
        self.name = f"opencv-{kind}"

    def config(self) -> dict:
        return {"kind": self.kind, "threshold": self.threshold, "opencv": self._cv2.__version__}

    def _detector(self):
        sal = self._cv2.saliency
        if self.kind == "spectral_residual":
            return sal.StaticSaliencySpectralResidual_create()
        return sal.StaticSaliencyFineGrained_create()

    def _mask(self, detector, rgb: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        if rgb.min() == rgb.max():  # flat image: nothing is salient (cv2 returns a normalised noise map)
            return np.zeros(rgb.shape[:2], dtype=bool)
        ok, smap = detector.computeSaliency(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"OpenCVStaticProvider: cv2.saliency {self.kind} failed on a {rgb.shape} image")
        smap = np.asarray(smap, dtype=np.float32)
        if smap.shape != rgb.shape[:2]:
            smap = cv2.resize(smap, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
        lo, hi = float(smap.min()), float(smap.max())
        if not hi > lo:
            return np.zeros(smap.shape, dtype=bool)
        norm = (smap - lo) / (hi - lo)
        if self.threshold != "otsu":
            return norm > self.threshold
        u8 = np.round(norm * 255.0).astype(np.uint8)
        t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return u8 > t

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        rgb = denormalize_uint8(images)
        detector = self._detector()
        masks = np.stack([self._mask(detector, im) for im in rgb])
        return torch.from_numpy(masks).to(images.device)


class GroundTruthProvider(SaliencyProvider):
    """Masks read from a data set with ``object_mask(i) -> bool [H, W]`` (e.g. ``SyntheticShapes``),
    mapped into the centre-view frame of size ``image_size`` by :func:`center_view_mask`.

    Index-based: use ``masks_for(indices)`` (images are not needed; ``needs_images`` is ``False``).
    """

    name = "ground-truth"
    needs_images = False

    def __init__(self, dataset, image_size: int) -> None:
        if not callable(getattr(dataset, "object_mask", None)):
            raise ValueError(f"dataset: {type(dataset).__name__} has no object_mask(i); ground-truth masks need one")
        self.dataset = dataset
        self.image_size = int(image_size)

    def config(self) -> dict:
        return {"dataset": type(self.dataset).__name__, "frame": "center-view-nearest", "image_size": self.image_size}

    def masks_for(self, indices: Sequence[int], images: torch.Tensor | None = None) -> torch.Tensor:
        masks = [center_view_mask(self.dataset.object_mask(int(i)), self.image_size) for i in indices]
        out = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, self.image_size, self.image_size, dtype=torch.bool)
        return out.to(images.device) if images is not None else out

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise TypeError("GroundTruthProvider works per sample index: call masks_for(indices)")
