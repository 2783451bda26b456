"""Host-side cost of one full pass (forward + backward) of the loss, native glue vs PyTorch glue.

On a GPU the fused backends' kernels are short (~2 ms at B=256), so the loss is bound by how fast the host
issues work; this script counts what each pass issues and times it at a small shape, where the device work
is negligible and the time is the host's:

- ``kernels``: device kernels launched (CUDA: kernel events of the profiler; CPU: ATen/extension ops that
  compute and call no other computing op -- roughly what would each be a kernel launch on a GPU);
- ``ops``: every ATen/extension op dispatched (views included);
- ``host_ms``: median wall time of one full pass (synchronised), small shape.

For each fused backend it measures every glue that can run on the device (``SGC_FAST_GLUE``: ``native``, the
extension's ops of csrc/contrast_glue.h; ``triton``, sgc_fast/triton/contrast_glue_kernel.py; ``torch``, the
plain-PyTorch glue of sgc_fast/contrast.py) in the same process.

    python benchmarks/count_launches.py                      # CPU backend (and triton if TRITON_INTERPRET=1)
    python benchmarks/count_launches.py --device cuda        # cuda and triton backends on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ops  # noqa: E402

import sgc_fast  # noqa: E402
from sgc_fast import fused  # noqa: E402

# Ops that only allocate or make views: no kernel on a GPU.
_NO_KERNEL = {
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::as_strided", "aten::view", "aten::_unsafe_view",
    "aten::reshape", "aten::_reshape_alias", "aten::expand", "aten::slice", "aten::select", "aten::unsqueeze",
    "aten::squeeze", "aten::t", "aten::transpose", "aten::permute", "aten::split", "aten::split_with_sizes",
    "aten::unbind", "aten::narrow", "aten::detach", "aten::alias", "aten::lift_fresh", "aten::to", "aten::_to_copy",
    "aten::resize_", "aten::contiguous", "aten::result_type", "aten::flatten", "aten::numpy_T", "aten::view_as",
    "aten::resolve_conj", "aten::resolve_neg", "aten::mT", "aten::expand_as", "aten::new_empty",
    "aten::new_empty_strided",
}


def _op_counts(events) -> tuple[int, int]:
    """(ops, kernel-like ops) among the profiler's CPU events of ATen and sgc_fast ops. An op is kernel-like
    when it is not a pure allocation/view and none of the ops it calls is kernel-like (composites count as
    what they call)."""
    ops = [e for e in events if e.name.startswith(("aten::", "sgc_fast::"))]
    memo: dict[int, bool] = {}

    def launches(e) -> int:
        key = id(e)
        if key not in memo:
            below = sum(launches(c) for c in _op_children(e))
            memo[key] = below if below else int(e.name not in _NO_KERNEL)
        return memo[key]

    roots = [e for e in ops if e.cpu_parent is None or not _under_op(e)]
    return len(ops), sum(launches(e) for e in roots)


def _is_op(e) -> bool:
    return e.name.startswith(("aten::", "sgc_fast::"))


def _op_children(e):
    """The nearest ops below ``e`` (through non-op records such as autograd or custom-op wrappers)."""
    for c in e.cpu_children:
        if _is_op(c):
            yield c
        else:
            yield from _op_children(c)


def _under_op(e) -> bool:
    p = e.cpu_parent
    while p is not None:
        if p.name.startswith(("aten::", "sgc_fast::")):
            return True
        p = p.cpu_parent
    return False


def _glue_runs(kind: str, device: torch.device) -> bool:
    with bench_ops.glue_env(f"probe:{kind}-glue"):  # (restores a SGC_FAST_GLUE the caller had set)
        return fused.glue_kind(device) == kind


def count(fn, params, device) -> dict:
    bench_ops._zero_grads(params)
    fn().backward()  # warm caches (interpolation matrices, kernels)
    bench_ops._sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    bench_ops._zero_grads(params)
    with profile(activities=acts) as prof:
        fn().backward()
        bench_ops._sync(device)
    events = prof.events()
    n_ops, n_leaf = _op_counts(events)
    if device.type == "cuda":
        kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    else:
        kernels = n_leaf
    return {"ops": n_ops, "kernels": kernels}


def host_ms(fn, params, device, reps: int) -> float:
    times = []
    for _ in range(reps):
        bench_ops._zero_grads(params)
        bench_ops._sync(device)
        t0 = time.perf_counter()
        fn().backward()
        bench_ops._sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backends", default=None, help="comma list of fused backends (default: those available)")
    ap.add_argument("--shape", default="8,64,7,7,64,64", help="B,K,h,w,H,W of the timed pass (small: host-bound)")
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.backends:
        backends = args.backends.split(",")
    else:
        backends = [b for b in ("cpu", "cuda", "triton") if b in sgc_fast.available_backends(device)]
    glues = [g for g in fused.GLUES if g == "torch" or _glue_runs(g, device)]
    B, K, h, w, H, W = (int(v) for v in args.shape.split(","))
    print(f"device {bench_ops.device_name(device)}, torch {torch.__version__}, shape B={B} K={K} {h}x{w}->{H}x{W}")
    print()
    print("| method | grads | backend | glue | kernels | ops | host ms |")
    print("|---|---|---|---|---|---|---|")
    for method in ("sgc", "cgc"):
        for grads in ("dense", "head"):
            case = bench_ops.Case(method, grads, B, K, h, w, H, W, torch.float32, device)
            for backend in backends:
                for glue in glues:
                    name = f"{backend}:{glue}-glue"
                    with bench_ops.glue_env(name):
                        inputs = bench_ops.make_inputs(case)
                        fn = bench_ops.loss_fn(backend, case, inputs)
                        params = bench_ops.leaves(inputs)
                        c = count(fn, params, device)
                        ms = host_ms(fn, params, device, args.reps)
                    print(f"| {method} | {grads} | {backend} | {glue} | {c['kernels']} | {c['ops']} | {ms:.3f} |",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
