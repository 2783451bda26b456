"""Benchmark of the saliency-contrast loss and its two ops, appended to benchmarks/results/ops.csv.

Backends compared in one run, on one device:

- ``research``: the research code's formulation, written here: CAM as ``relu((G * A).sum(1))``,
  ``F.interpolate`` to full size, sum normalisation, masking or a per-sample crop/resize/flip loop,
  ``F.normalize``, the logits with the diagonal removed by boolean indexing, cross-entropy;
- ``reference``: sgc_fast.reference (batched, full-resolution maps);
- ``compile``: ``torch.compile`` of the reference forward + backward (GPU only);
- ``cpu`` / ``cuda`` / ``triton``: the fused backends;
- ``floor`` (GPU only): bytes that must move / measured copy bandwidth + Gram FLOPs / measured IEEE
  fp32 matmul rate;
- ``<fused backend>:<glue>-glue`` (on request, e.g. ``cuda:torch-glue``, ``triton:triton-glue``): that backend
  with the float64 glue around its kernels forced to ``native``, ``triton`` or ``torch`` (``SGC_FAST_GLUE``;
  sgc_fast.fused.glue_kind) -- the ablation of the glue's launch overhead;
- ``triton:tf32x3`` / ``triton:tf32`` (on request): the Triton backend with its float32 ``tl.dot`` s on tensor
  cores (``SGC_FAST_TRITON_DOT``), three TF32 products (about float32 accuracy) or one.

Passes: ``fwd`` (loss forward, graph built), ``bwd`` (backward alone, after an untimed forward),
``full`` (both). Memory (GPU only): ``peak_mb`` = peak allocated during forward + backward beyond the
inputs and their gradients; ``saved_mb`` = what the loss keeps alive between forward and backward.

Examples::

    python benchmarks/bench_ops.py                          # CPU: B=32, K=512, 7x7 -> 224x224
    python benchmarks/bench_ops.py --preset gpu-must        # GPU must-run set (B=256 loss, full pass)
    python benchmarks/bench_ops.py --preset gpu-all
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sgc_fast  # noqa: E402
from sgc_fast import reference  # noqa: E402

COLUMNS = "date,device,torch,triton,op,backend,method,grads,dtype,pass,B,K,h,w,H,W,median_ms,peak_mb,saved_mb".split(",")
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "ops.csv"


# ---------------------------------------------------------------------------------------------------------------
# The research code's formulation (baseline)
# ---------------------------------------------------------------------------------------------------------------


def research_loss(feats_orig, grads_orig, feats_aug, grads_aug, mask, crop, flip, size, temperature, eps=1e-8):
    def cam_mask(feats, grads):
        m = F.relu((grads * feats).sum(1))
        m = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        return m / (m.sum((1, 2), keepdim=True) + eps) + eps

    m_orig = cam_mask(feats_orig, grads_orig)
    m_aug = cam_mask(feats_aug, grads_aug)
    if crop is not None:
        warped = torch.zeros_like(m_orig)
        for b in range(m_orig.shape[0]):
            i, j, h, w = (int(v) for v in crop[b])
            piece = F.interpolate(m_orig[b : b + 1, None, i : i + h, j : j + w], size=size, mode="bilinear",
                                  align_corners=False)[0, 0]
            warped[b] = piece.flip(-1) if bool(flip[b]) else piece
        m_orig = warped
    if mask is not None:
        m_aug = m_aug * mask
    a = F.normalize(m_aug.flatten(1), dim=1)
    p = F.normalize(m_orig.flatten(1), dim=1)
    B = a.shape[0]
    pos = (a * p).sum(1, keepdim=True)
    sim = a @ a.T
    neg = sim[~torch.eye(B, dtype=torch.bool, device=sim.device)].view(B, B - 1)
    logits = torch.cat([pos, neg], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(B, dtype=torch.long, device=logits.device))


# ---------------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    method: str  # sgc | cgc
    grads: str  # dense | head
    B: int
    K: int
    h: int
    w: int
    H: int
    W: int
    dtype: torch.dtype
    device: torch.device


def make_inputs(case: Case, seed: int = 0):
    """Leaf feats (and dense grads, or a Linear weight for head grads) of both views, plus mask/crop."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    dev, dt = case.device, case.dtype
    shape = (case.B, case.K, case.h, case.w)

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(device=dev, dtype=dt)

    feats = [rnd(*shape).relu_().requires_grad_() for _ in range(2)]
    inputs = {"feats_orig": feats[0], "feats_aug": feats[1]}
    if case.grads == "dense":
        inputs["grads_orig"] = rnd(*shape, scale=0.01).requires_grad_()
        inputs["grads_aug"] = rnd(*shape, scale=0.01).requires_grad_()
    else:
        inputs["weight"] = rnd(100, case.K, scale=0.05).requires_grad_()
        inputs["targets"] = torch.randint(0, 100, (case.B,), generator=g).to(dev)
    if case.method == "sgc":
        inputs["mask"] = (torch.rand(case.B, case.H, case.W, generator=g) > 0.4).to(dev)
        inputs["crop"] = inputs["flip"] = None
    else:
        hh = torch.randint(case.H // 4, case.H + 1, (case.B,), generator=g)
        ww = torch.randint(case.W // 4, case.W + 1, (case.B,), generator=g)
        top = (torch.rand(case.B, generator=g) * (case.H - hh + 1)).long()
        left = (torch.rand(case.B, generator=g) * (case.W - ww + 1)).long()
        inputs["crop"] = torch.stack([top, left, hh, ww], 1).to(dev)
        inputs["flip"] = (torch.rand(case.B, generator=g) > 0.5).to(dev)
        inputs["mask"] = None
    return inputs


def leaves(inputs):
    return [v for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad]


GLUE_RE = re.compile(r"^(\w+):(native|triton|torch)-glue$")
DOT_RE = re.compile(r"^(triton):(tf32x3|tf32)$")


def split_backend(backend: str) -> tuple[str, str | None]:
    """``"cuda:torch-glue"`` -> ``("cuda", "torch")``; ``"triton:tf32x3"`` -> ``("triton", None)``; ``"cuda"`` ->
    ``("cuda", None)`` (the automatic glue)."""
    m = GLUE_RE.match(backend)
    if m:
        return m.group(1), m.group(2)
    m = DOT_RE.match(backend)
    return (m.group(1), None) if m else (backend, None)


@contextlib.contextmanager
def glue_env(backend: str):
    """The environment a variant backend asks for while it is measured (forward and backward): ``SGC_FAST_GLUE``
    for ``...:<glue>-glue``, ``SGC_FAST_TRITON_DOT`` for ``triton:tf32x3`` / ``triton:tf32`` (tensor cores)."""
    _, glue = split_backend(backend)
    dot = DOT_RE.match(backend)
    want = {"SGC_FAST_GLUE": glue} if glue else {"SGC_FAST_TRITON_DOT": dot.group(2)} if dot else {}
    old = {k: os.environ.get(k) for k in want}
    os.environ.update(want)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def loss_fn(backend: str, case: Case, inputs):
    """A closure computing the loss from ``inputs`` with ``backend``."""
    size = (case.H, case.W)
    backend = split_backend(backend)[0]

    def grads_of(view):
        if case.grads == "dense":
            return inputs[f"grads_{view}"]
        return sgc_fast.head_grads(inputs["weight"], inputs[f"feats_{view}"], inputs["targets"])

    if backend == "research":
        return lambda: research_loss(inputs["feats_orig"], grads_of("orig"), inputs["feats_aug"], grads_of("aug"),
                                     inputs["mask"], inputs["crop"], inputs["flip"], size, 0.5)
    if backend == "compile":
        compiled = torch.compile(reference.saliency_contrast_loss, dynamic=False)
        return lambda: compiled(inputs["feats_orig"], grads_of("orig"), inputs["feats_aug"], grads_of("aug"),
                                mask=inputs["mask"], crop=inputs["crop"], flip=inputs["flip"], size=size)
    return lambda: sgc_fast.saliency_contrast_loss(
        inputs["feats_orig"], grads_of("orig"), inputs["feats_aug"], grads_of("aug"), mask=inputs["mask"],
        crop=inputs["crop"], flip=inputs["flip"], size=size, backend=backend,
    )


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _zero_grads(params):
    for p in params:
        if p.grad is not None:
            p.grad = None


def time_pass(fn, params, which: str, device, warmup: int, reps: int) -> float:
    """Median milliseconds of one pass (fwd, bwd, full)."""
    times = []
    for it in range(warmup + reps):
        _zero_grads(params)
        if which == "bwd":
            loss = fn()
            _sync(device)
            t0 = time.perf_counter()
            loss.backward()
            _sync(device)
            dt = time.perf_counter() - t0
        else:
            _sync(device)
            t0 = time.perf_counter()
            loss = fn()
            if which == "full":
                loss.backward()
            _sync(device)
            dt = time.perf_counter() - t0
            del loss
        if it >= warmup:
            times.append(dt * 1e3)
    return statistics.median(times)


def time_pass_gpu(fn, params, which: str, warmup_ms: int = 100, rep_ms: int = 500) -> float:
    """Median milliseconds with CUDA events (triton.testing.do_bench style; bwd timed after a forward)."""
    import triton.testing

    if which == "bwd":
        starts, ends = [], []
        for _ in range(5):  # warm-up
            _zero_grads(params)
            fn().backward()
        torch.cuda.synchronize()
        for _ in range(max(10, rep_ms // 10)):
            _zero_grads(params)
            loss = fn()
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            loss.backward()
            e.record()
            starts.append(s)
            ends.append(e)
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))

    def run():
        _zero_grads(params)
        loss = fn()
        if which == "full":
            loss.backward()

    return triton.testing.do_bench(run, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def memory_mb(fn, params, device):
    """(peak_mb, saved_mb) on a GPU, beyond inputs and input gradients; (None, None) on the CPU."""
    if device.type != "cuda":
        return None, None
    _zero_grads(params)
    fn().backward()  # allocate input gradients once
    for p in params:
        p.grad.zero_()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = fn()
    torch.cuda.synchronize()
    saved = torch.cuda.memory_allocated() - base
    loss.backward()
    del loss
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return peak / 2**20, saved / 2**20


def floor_ms(case: Case, which: str, copy_gbps: float, matmul_tflops: float) -> float:
    """Bytes that must move / copy bandwidth + Gram FLOPs / fp32 matmul rate."""
    elt = torch.finfo(case.dtype).bits // 8
    n = case.B * case.K * case.h * case.w * elt
    mask_bytes = case.B * case.H * case.W if case.method == "sgc" else 0
    if case.grads == "dense":
        fwd_bytes, bwd_bytes = 4 * n, 8 * n  # fwd reads A, G of two views; bwd reads them, writes dA, dG
    else:
        fwd_bytes, bwd_bytes = 2 * n, 4 * n  # fwd reads A of two views; bwd reads A, writes dA
    fwd_bytes += mask_bytes
    bwd_bytes += mask_bytes
    hw_full = case.H * case.W
    # SGC: the symmetric Gram forward (B^2 HW multiply-adds over the upper triangle ~ B^2 HW FLOPs), the
    # field C A backward (2 B^2 HW). CGC works on the h x w grid: negligible.
    fwd_flops = case.B**2 * hw_full if case.method == "sgc" else 0
    bwd_flops = 2 * case.B**2 * hw_full if case.method == "sgc" else 0
    t = {
        "fwd": fwd_bytes / copy_gbps / 1e6 + fwd_flops / matmul_tflops / 1e9,
        "bwd": bwd_bytes / copy_gbps / 1e6 + bwd_flops / matmul_tflops / 1e9,
    }
    t["full"] = t["fwd"] + t["bwd"]
    return t[which]


def measure_ceilings(device) -> tuple[float, float]:
    """Measured device-to-device copy bandwidth (GB/s, read + write) and IEEE fp32 matmul TFLOP/s."""
    import triton.testing

    n = 2**28  # 1 GiB of float32 each way
    src = torch.empty(n, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    gbps = 2 * n * 4 / ms / 1e6
    src = dst = None
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(8192, 8192, device=device)
    b = torch.randn(8192, 8192, device=device)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    torch.backends.cuda.matmul.allow_tf32 = prev
    return gbps, 2 * 8192**3 / ms / 1e9


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return ""


PRESETS = {
    # name: list of (B, K, h, w, H, W)
    "cpu": [(32, 512, 7, 7, 224, 224)],
    "gpu-must": [(256, 2048, 7, 7, 224, 224)],
    "gpu-all": [(256, 2048, 7, 7, 224, 224), (128, 2048, 7, 7, 224, 224), (64, 2048, 7, 7, 224, 224),
                (256, 512, 7, 7, 224, 224), (64, 2048, 14, 14, 448, 448)],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="shape set (default: cpu on a CPU, gpu-must on a GPU)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--methods", default="sgc,cgc")
    ap.add_argument("--grads", default="dense,head")
    ap.add_argument("--backends", default=None, help="comma list (default: all that can run on the device)")
    ap.add_argument("--passes", default="fwd,bwd,full")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--csv", default=str(DEFAULT_CSV), help="CSV to append to ('' for none)")
    ap.add_argument("--shape", default=None, help="B,K,h,w,H,W (overrides the preset)")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = args.preset or ("gpu-must" if device.type == "cuda" else "cpu")
    shapes = [tuple(int(v) for v in args.shape.split(","))] if args.shape else PRESETS[preset]
    dtype = getattr(torch, args.dtype)
    if args.backends:
        backends = args.backends.split(",")
    elif device.type == "cuda":
        backends = ["research", "reference", "compile"] + [b for b in ("cuda", "triton")
                                                             if b in sgc_fast.available_backends(device)] + ["floor"]
    else:
        backends = ["research", "reference"] + [b for b in ("cpu",) if b in sgc_fast.available_backends(device)]
    ceilings = measure_ceilings(device) if device.type == "cuda" and "floor" in backends else None
    if ceilings:
        print(f"measured copy bandwidth {ceilings[0]:.0f} GB/s, fp32 IEEE matmul {ceilings[1]:.1f} TFLOP/s")

    date = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    dev_name = device_name(device)
    rows = []
    for B, K, h, w, H, W in shapes:
        for method in args.methods.split(","):
            for grads in args.grads.split(","):
                case = Case(method, grads, B, K, h, w, H, W, dtype, device)
                for backend in backends:
                    for which in args.passes.split(","):
                        row = dict(date=date, device=dev_name, torch=torch.__version__, triton=triton_version(),
                                   op="loss", backend=backend, method=method, grads=grads, dtype=args.dtype,
                                   B=B, K=K, h=h, w=w, H=H, W=W, peak_mb="", saved_mb="")
                        row["pass"] = which
                        if backend == "floor":
                            row["median_ms"] = f"{floor_ms(case, which, *ceilings):.4f}"
                            rows.append(row)
                            print(_fmt(row), flush=True)
                            continue
                        with glue_env(backend):
                            try:
                                inputs = make_inputs(case)
                                fn = loss_fn(backend, case, inputs)
                                params = leaves(inputs)
                                if device.type == "cuda":
                                    ms = time_pass_gpu(fn, params, which)
                                    if which == "full":
                                        peak, saved = memory_mb(fn, params, device)
                                        row["peak_mb"], row["saved_mb"] = f"{peak:.1f}", f"{saved:.1f}"
                                else:
                                    ms = time_pass(fn, params, which, device, args.warmup, args.reps)
                            except Exception as exc:  # a backend that fails is reported, not fatal
                                print(f"{backend} {method} {grads} {which}: FAILED {type(exc).__name__}: {exc}",
                                      flush=True)
                                continue
                            finally:
                                if device.type == "cuda":
                                    torch.cuda.empty_cache()
                        row["median_ms"] = f"{ms:.3f}"
                        rows.append(row)
                        print(_fmt(row), flush=True)
    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                wr.writeheader()
            wr.writerows(rows)
    print()
    print(summary_table(rows))
    return 0


def _fmt(row) -> str:
    mem = f" peak {row['peak_mb']} MB saved {row['saved_mb']} MB" if row["peak_mb"] else ""
    return (f"{row['method']:>3} {row['grads']:>5} B={row['B']} K={row['K']} {row['h']}x{row['w']}->{row['H']}x{row['W']}"
            f" {row['backend']:>9} {row['pass']:>4}: {float(row['median_ms']):9.3f} ms{mem}")


def summary_table(rows) -> str:
    """Markdown table: one line per (shape, method, grads, backend), fwd/bwd/full ms and speed-up vs reference."""
    from collections import defaultdict

    t = defaultdict(dict)
    mem = {}
    for r in rows:
        key = (r["B"], r["K"], f"{r['h']}x{r['w']}->{r['H']}x{r['W']}", r["method"], r["grads"], r["backend"])
        t[key][r["pass"]] = float(r["median_ms"])
        if r["peak_mb"]:
            mem[key] = (r["peak_mb"], r["saved_mb"])
    lines = ["| B | K | maps | method | grads | backend | fwd ms | bwd ms | full ms | full vs reference | peak MB | saved MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, v in t.items():
        ref = t.get(key[:5] + ("reference",), {}).get("full")
        speed = f"{ref / v['full']:.1f}x" if ref and v.get("full") else ""
        pk, sv = mem.get(key, ("", ""))
        lines.append("| " + " | ".join(str(x) for x in key) + " | " + " | ".join(
            f"{v[p]:.2f}" if p in v else "" for p in ("fwd", "bwd", "full")) + f" | {speed} | {pk} | {sv} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
