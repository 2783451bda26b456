"""Shared by the tests/test_hardening_*.py modules (one per class of failure)."""

from __future__ import annotations

import torch

import sgc_fast
from sgc_fast.train import cli

TINY = ["--dataset", "synthetic", "--image-size", "48", "--limit", "48", "-b", "16", "--lr", "0.002", "-j", "0",
        "--seed", "0", "--no-progress", "--method", "sgc", "--saliency", "ground-truth"]
BACKENDS = [b for b in ("cpu", "reference") if b in sgc_fast.available_backends("cpu")]


def train(tmp, *extra):
    return cli.main([*TINY, "--save_dir", str(tmp / "ckpt"), "--log_dir", str(tmp / "logs"), *extra])


def cams(B=3, h=4, w=3):
    return torch.rand(B, h, w) + 0.1, torch.rand(B, h, w) + 0.1
