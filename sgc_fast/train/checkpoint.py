"""Checkpoints that survive a crash and load with ``torch.load(weights_only=True)``.

A checkpoint is written to a temporary file in the target directory, flushed to disk and renamed
over the target (``os.replace``), so ``last.pt`` / ``best.pt`` are always either the old or the new
complete file. Everything in it is a tensor or a plain Python value (RNG states included), which is
what ``weights_only=True`` accepts.

Keys: ``format``, ``arch``, ``num_classes``, ``classes``, ``method``, ``epoch`` (epochs completed),
``model`` (plain torchvision keys), ``optimizer``, ``scheduler``, ``acc1``/``acc5`` (this epoch's
validation), ``best_acc1``, ``rng`` (see :func:`rng_state`), ``args``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]

FORMAT = "sgc_fast.train/1"


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Atomically write ``state`` to ``path`` (:func:`sgc_fast.files.atomic_write`: a fresh ``mkstemp`` file in the
    same folder, fsync, ``os.replace``)."""
    atomic_write(path, lambda f: torch.save(state, f))


#: What every sgc-train checkpoint holds (see the module docstring).
REQUIRED_KEYS = ("format", "arch", "num_classes", "classes", "epoch", "model")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)``, with a one-line ``ValueError`` naming the file for anything that is
    not a readable checkpoint (truncated, not a torch file, not a dict, an sgc-train checkpoint missing keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises EOFError, RuntimeError, UnpicklingError, KeyError, ... for bad files
        kind = type(exc).__name__
        detail = str(exc).splitlines()[0][:200] if str(exc) else "no detail"
        raise ValueError(f"checkpoint: {path} is not a readable checkpoint (truncated or not a torch file: {kind}: "
                         f"{detail})") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint: {path} holds a {type(state).__name__}, expected a dict")
    if state.get("format") == FORMAT:
        missing = [k for k in REQUIRED_KEYS if k not in state]
        if missing:
            raise ValueError(f"checkpoint: {path} is an sgc-train checkpoint without {missing} (damaged?)")
    return state


def rng_state(data_generator: torch.Generator | None = None) -> dict:
    """Every RNG the run touches, as tensors and plain values: torch (CPU and each CUDA device), NumPy,
    Python ``random``, and the data-order generator."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if data_generator is not None:
        state["data"] = data_generator.get_state()
    return state


def _to_lists(obj):
    return [_to_lists(x) for x in obj] if isinstance(obj, tuple) else obj


def _to_tuples(obj):
    return tuple(_to_tuples(x) for x in obj) if isinstance(obj, list) else obj


def set_rng_state(state: dict, data_generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` recorded."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    if data_generator is not None and "data" in state:
        data_generator.set_state(state["data"])
