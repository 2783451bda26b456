"""What the Triton kernels of sgc_fast share: how they are launched, tuned and how much work a launch is split into.

- On CUDA the kernels are launched through ``torch.library.wrap_triton`` inside ``triton_op`` s, so that
  ``torch.compile`` sees them; under ``TRITON_INTERPRET=1`` they are called directly.
- Autotuning uses each kernel's GPU configs; the interpreter cannot autotune between several configs,
  so there every kernel gets its single small interpreter config.
- ``split_count`` decides how many independent partial results (K-chunks, row-chunks) a launch computes:
  enough programs to fill the GPU a few times over; two under the interpreter, so that the tests exercise
  the partial-sum reductions while staying fast.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton

from . import INTERPRET

__all__ = ["INTERPRET", "launcher", "tuned", "split_count", "next_pow2", "on_device", "scalars", "DOT_MIN"]

#: Programs per streaming multiprocessor that a launch aims for (latency hiding, tail effects).
PROGRAMS_PER_SM = 4
#: Partial results per launch under the interpreter (>1 so that reductions are tested).
INTERPRET_SPLITS = 2
#: Smallest dimension ``tl.dot`` accepts on NVIDIA GPUs.
DOT_MIN = 16


def launcher(kernel):
    """``kernel`` wrapped for tracing (CUDA, inside a triton_op), or as is (interpreter)."""
    if INTERPRET:
        return kernel
    return torch.library.wrap_triton(kernel)


def tuned(configs: list, interpret_config, key: list[str], float64_config=None):
    """``triton.autotune`` over ``configs`` on the GPU; the single ``interpret_config`` under the interpreter.

    With ``float64_config``, launches with any float64 tensor argument use that config alone (and the
    autotune key includes the dtypes, so float32 and float64 launches are tuned apart)."""
    if INTERPRET:
        return triton.autotune(configs=[interpret_config], key=key)
    if float64_config is None:
        return triton.autotune(configs=configs, key=key)

    def prune(configs, named_args, **kwargs):
        if any(getattr(v, "dtype", None) == torch.float64 for v in named_args.values()):
            return [float64_config]
        return [c for c in configs if c is not float64_config]

    return triton.autotune(configs=configs + [float64_config], key=key,
                           prune_configs_by={"early_config_prune": prune})


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def split_count(device: torch.device, programs_per_split: int, limit: int, programs_per_sm: int = PROGRAMS_PER_SM) -> int:
    """How many partial results to split a launch into, given the programs each split contributes
    (``programs_per_split``), the most splits that make sense (``limit``) and the programs per SM to aim for."""
    if INTERPRET or device.type != "cuda":
        return max(1, min(INTERPRET_SPLITS, limit))
    index = device.index if device.index is not None else torch.cuda.current_device()
    want = triton.cdiv(programs_per_sm * _sm_count(index), max(1, programs_per_split))
    return max(1, min(want, limit))


def next_pow2(n: int, floor: int = 1) -> int:
    return max(floor, triton.next_power_of_2(max(1, int(n))))


def on_device(device: torch.device):
    """Launch on ``device``'s GPU (Triton launches on the current device, whatever the tensors')."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@functools.lru_cache(maxsize=64)
def scalars(device: torch.device, *values: float) -> torch.Tensor:
    """A float64 tensor of ``values`` on ``device`` (read-only; cached so that a step makes no copy)."""
    return torch.tensor(values, dtype=torch.float64, device=device)
