"""``sgc-train`` under ``torchrun``: the process group, the per-rank data order, and reductions.

``torchrun --nproc_per_node N -m sgc_fast.train ...`` starts N processes with ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment; :func:`setup` joins them into one
process group (NCCL for CUDA devices, gloo on the CPU) and gives each its device (``cuda:LOCAL_RANK``).
Without those variables (a plain ``sgc-train``) nothing is initialised and the run is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["World", "default_device", "setup", "teardown", "EpochSampler", "all_sum", "broadcast_object", "broadcast_buffers"]


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size``; ``main`` (rank 0) writes logs and checkpoints."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"sgc-train: environment variable {name}={value!r} is not an integer") from None


def default_device(device_arg: str | None) -> torch.device:
    """``--device`` when given (checked: a CUDA device must exist), else ``cuda`` when available, else the CPU."""
    if not device_arg:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device_arg)
    except RuntimeError:
        raise ValueError(f"--device: {device_arg!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device_arg}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device_arg}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def setup(device_arg: str | None, backend: str = "auto") -> tuple[World, torch.device]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (else a world of one); returns ``(world,
    device)``. Under torchrun each process uses ``cuda:LOCAL_RANK`` when CUDA is there (or ``--device cuda``),
    else the CPU; ``--device cpu`` forces gloo on the CPU."""
    size = _env_int("WORLD_SIZE") or 1
    if size <= 1:
        return World(), default_device(device_arg)
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    if rank is None or local_rank is None:
        raise SystemExit("sgc-train: WORLD_SIZE > 1 but RANK / LOCAL_RANK are not set; start it with torchrun")
    want_cuda = torch.device(device_arg).type == "cuda" if device_arg else torch.cuda.is_available()
    if want_cuda:
        if not torch.cuda.is_available():
            raise SystemExit(f"sgc-train: --device {device_arg}: CUDA is not available on rank {rank}")
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"sgc-train: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices "
                             f"(--nproc_per_node at most the GPU count)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return World(rank=rank, size=size, local_rank=local_rank), device


def teardown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


class EpochSampler(Sampler[int]):
    """A random order of ``n`` samples per epoch, drawn from ``generator`` and the same on every rank; rank
    ``r`` of ``W`` takes positions ``r, r + W, ...`` (``n // W`` each, so every rank runs the same number of
    steps). With one rank the order, and the generator's state after the epoch, are those of
    ``RandomSampler(generator=generator)`` (two ``randperm`` draws per epoch).

    :meth:`resume_at` restarts an epoch from a checkpoint taken inside it: the generator state at the epoch's
    start (:attr:`epoch_state`) and the number of samples this rank had already taken.
    """

    def __init__(self, n: int, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> None:
        if n < world_size:
            raise ValueError(f"n: {n} samples cannot be shared by {world_size} processes")
        self.n, self.generator, self.rank, self.world_size = int(n), generator, int(rank), int(world_size)
        self.epoch_state: torch.Tensor = generator.get_state()
        self._skip = 0

    def resume_at(self, epoch_state: torch.Tensor, skip: int) -> None:
        self.generator.set_state(epoch_state)
        self._skip = int(skip)

    @property
    def per_rank(self) -> int:
        return self.n // self.world_size

    def __len__(self) -> int:
        return self.per_rank - self._skip

    def __iter__(self):
        self.epoch_state = self.generator.get_state()
        order = torch.randperm(self.n, generator=self.generator)
        torch.randperm(self.n, generator=self.generator)  # RandomSampler's second (empty-slice) draw
        mine = order[: self.per_rank * self.world_size][self.rank:: self.world_size]
        skip, self._skip = self._skip, 0
        return iter(mine[skip:].tolist())


def all_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    """Sum of ``t`` over the ranks (in place; ``t`` itself in a world of one)."""
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, world: World):
    """Rank 0's ``obj`` on every rank (pickled; for small things such as an image list)."""
    if not world.distributed:
        return obj
    box = [obj if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module, world: World) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, before evaluating or saving."""
    if world.distributed:
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)
