"""Shared by the tests/test_hardening_*.py modules (one per class of failure)."""

from __future__ import annotations

import torch

import sgc_fast
from sgc_fast.data.synthetic import SyntheticShapes
from sgc_fast.saliency import key_extra
from sgc_fast.saliency.cache import MaskCache
from sgc_fast.saliency.providers import GroundTruthProvider
from sgc_fast.train import cli

TINY = ["--dataset", "synthetic", "--image-size", "48", "--limit", "48", "-b", "16", "--lr", "0.002", "-j", "0",
        "--seed", "0", "--no-progress", "--method", "sgc", "--saliency", "ground-truth"]
BACKENDS = [b for b in ("cpu", "reference") if b in sgc_fast.available_backends("cpu")]


def train(tmp, *extra):
    return cli.main([*TINY, "--save_dir", str(tmp / "ckpt"), "--log_dir", str(tmp / "logs"), *extra])


def cams(B=3, h=4, w=3):
    return torch.rand(B, h, w) + 0.1, torch.rand(B, h, w) + 0.1


def build_cache(path, size: int = 32, length: int | None = 6, provider=None, **build_kw):
    """A mask cache of the synthetic train split at ``path`` (ground-truth masks unless ``provider`` is given);
    returns the data set and its image ids."""
    base = SyntheticShapes("train", size=size, length=length)
    ids = [base.image_id(i) for i in range(len(base))]
    provider = provider if provider is not None else GroundTruthProvider(base, size)
    MaskCache.build(path, ids, provider, None, key_extra=key_extra(base, size), progress=False, **build_kw)
    return base, ids
