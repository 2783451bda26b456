"""CAM extraction: sgc_fast.CAM against pytorch-grad-cam, captum and torchcam; rows appended to
benchmarks/results/cam.csv.

Methods, each given the same images and the same target classes:

- ``forward``: the plain ``model(images)`` under ``no_grad`` (what a prediction costs; the overhead baseline);
- ``sgc_fast``: ``sgc_fast.CAM(model, layer)(images, targets)``, the ``[B, h, w]`` HiRes-CAM;
- ``sgc_fast:input``: the same upsampled to the input size and min-max scaled per image (``size="input",
  normalize=True``), i.e. the ``[B, H, W]`` maps in ``[0, 1]`` that pytorch-grad-cam returns;
- ``grad-cam``: pytorch-grad-cam ``HiResCAM`` (``[B, H, W]`` numpy, scaled and resized by cv2);
- ``captum``: captum ``LayerGradCam(...).attribute(..., relu_attributions=True)`` (``[B, 1, h, w]``);
- ``torchcam``: torchcam ``GradCAM`` (forward, then the extractor on the scores; ``[B, h, w]``, scaled).

Each extractor object is built inside the timed call (their hooks must not slow the others). For each model and
batch one process times all methods round-robin, each call right after a plain ``forward`` (``--reps`` rounds
after ``--warmup``), so that drift and the state of the memory allocator are shared by all: ``median_ms`` is
the method's median, ``overhead_ms`` the median over pairs of (method - forward), i.e. what the CAM adds to a
prediction. ``peak_mb`` comes from one more process per method: CPU, the rise of the process's peak RSS over a
plain forward's; GPU, peak allocated beyond the model and images.

Examples::

    python benchmarks/bench_cam.py                                  # CPU: resnet18/50 + convnext_tiny, B=1/16/64
    python benchmarks/bench_cam.py --models resnet50 --batches 16 --reps 9
    python benchmarks/bench_cam.py --device cuda --reps 20          # the GPU run (224 px, fp32)
    python benchmarks/bench_cam.py --device cuda --amp bfloat16
    python benchmarks/bench_cam.py --table                          # results/cam.md from the newest rows
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "cam.csv"
COLUMNS = (
    "date,device,torch,threads,model,layer,method,B,size,amp,reps,median_ms,forward_ms,overhead_ms,images_per_s,peak_mb"
).split(",")
METHODS = ("forward", "sgc_fast", "sgc_fast:input", "grad-cam", "captum", "torchcam")
LAYERS = {"resnet18": "layer4", "resnet50": "layer4", "convnext_tiny": "features", "efficientnet_b0": "features"}


# ---------------------------------------------------------------------------------------------------------------
# One method in this process
# ---------------------------------------------------------------------------------------------------------------


def make_call(method: str, model, layer_name: str, images, targets):
    import torch

    layer = model.get_submodule(layer_name)
    target_list = [int(t) for t in targets.cpu()]
    if method == "forward":

        def call():
            with torch.no_grad():
                return model(images)

    elif method in ("sgc_fast", "sgc_fast:input"):
        import sgc_fast

        upsampled = method == "sgc_fast:input"

        def call():
            cam = sgc_fast.CAM(model, layer_name)
            return cam(images, targets, size="input" if upsampled else None, normalize=upsampled)

    elif method == "grad-cam":
        from pytorch_grad_cam import HiResCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        wrapped = [ClassifierOutputTarget(t) for t in target_list]

        def call():
            with HiResCAM(model=model, target_layers=[layer]) as cam:
                return cam(input_tensor=images, targets=wrapped)

    elif method == "captum":
        from captum.attr import LayerGradCam

        def call():
            return LayerGradCam(model, layer).attribute(images, target=targets, relu_attributions=True)

    elif method == "torchcam":
        from torchcam.methods import GradCAM

        def call():
            with GradCAM(model, layer_name) as extractor:
                scores = model(images)
                return extractor(target_list, scores)

    else:
        raise ValueError(f"method: unknown {method!r} (expected one of {METHODS})")
    return call


def run_one(args) -> dict:
    """``--one``: time every method of ``args.methods`` round-robin with the plain forward in this process
    (``args.method`` unset), or measure the peak memory of ``args.method`` alone."""
    import torch
    import torchvision

    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = getattr(torchvision.models, args.model)(num_classes=1000).eval().to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    targets = torch.arange(args.batch, device=device) % 1000
    amp = (
        torch.autocast(device.type, dtype=getattr(torch, args.amp))
        if args.amp != "fp32"
        else torch.autocast(device.type, enabled=False)
    )

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with amp:
            out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        del out
        model.zero_grad(set_to_none=True)  # what grad-cam leaves in .grad is not carried over
        return (time.perf_counter() - start) * 1e3

    forward = make_call("forward", model, LAYERS[args.model], images, targets)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.method:  # memory: this method alone, after a plain forward
        method = make_call(args.method, model, LAYERS[args.model], images, targets)
        timed(forward)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(max(args.warmup, 1) + 1):
            timed(method)
        if device.type == "cuda":
            return info | {"peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}
        return info | {"peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_base) / 1024}  # KiB

    # time: the methods and the forward alternate, so that drift and the allocator's state are shared
    calls = {m: make_call(m, model, LAYERS[args.model], images, targets) for m in args.methods}
    for _ in range(args.warmup):
        timed(forward)
        for fn in calls.values():
            timed(fn)
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in calls}
    for _ in range(args.reps):
        for m, fn in calls.items():
            times[m].append((timed(forward), timed(fn)))
    out = {}
    for m, pairs in times.items():
        med_ms = statistics.median(t for _, t in pairs)
        out[m] = info | {
            "median_ms": med_ms,
            "forward_ms": statistics.median(f for f, _ in pairs),
            "overhead_ms": statistics.median(t - f for f, t in pairs),
            "images_per_s": args.batch / med_ms * 1e3,
        }
    return out


# ---------------------------------------------------------------------------------------------------------------
# The driver: one process per (model, batch, method)
# ---------------------------------------------------------------------------------------------------------------


def append_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def fmt(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def table(path: Path) -> str:
    """Markdown tables of the newest run in ``path`` (the rows that share its last date and device)."""
    rows = list(csv.DictReader(path.open()))
    if not rows:
        raise SystemExit(f"--table: no rows in {path}")
    last = rows[-1]
    rows = [r for r in rows if r["date"] == last["date"] and r["device"] == last["device"]]
    by = {(r["model"], int(r["B"]), r["method"]): r for r in rows}
    keys = sorted({(m, b) for m, b, _ in by}, key=lambda k: (list(LAYERS).index(k[0]), k[1]))
    anchors = [m for m in METHODS[1:] if any(k[2] == m for k in by)]

    def cell(key, field, digits=1):
        r = by.get(key)
        return f"{float(r[field]):.{digits}f}" if r else "-"

    def ratio(model, b, slow, fast):
        s, f = by.get((model, b, slow)), by.get((model, b, fast))
        if not s or not f or float(f["overhead_ms"]) <= 0:
            return "-"
        return f"{float(s['overhead_ms']) / float(f['overhead_ms']):.0f}x"

    head = f"{last['device']}, torch {last['torch']}, {last['threads']} threads, {last['size']} px, {last['amp']}, " \
        f"median of {last['reps']} (run {last['date']} UTC)"
    out = [f"CAM overhead over the plain forward, ms ({head}):", ""]
    out.append("| model | B | forward | " + " | ".join(anchors) + " | grad-cam / sgc_fast:input |")
    out.append("|---|---|---|" + "---|" * len(anchors) + "---|")
    for m, b in keys:
        fwd = by.get((m, b, anchors[0]), {}).get("forward_ms")
        cells = [cell((m, b, a), "overhead_ms") for a in anchors]
        out.append(f"| {m} | {b} | {float(fwd):.1f} | " + " | ".join(cells) + f" | {ratio(m, b, 'grad-cam', 'sgc_fast:input')} |")
    out += ["", "Images/s, and peak memory beyond a plain forward (MB):", ""]
    out.append("| model | B | " + " | ".join(f"{a} img/s" for a in anchors) + " | " + " | ".join(f"{a} MB" for a in anchors) + " |")
    out.append("|---|---|" + "---|" * (2 * len(anchors)))
    for m, b in keys:
        speed = [cell((m, b, a), "images_per_s") for a in anchors]
        mem = [cell((m, b, a), "peak_mb", 0) for a in anchors]
        out.append(f"| {m} | {b} | " + " | ".join(speed + mem) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "convnext_tiny"], choices=sorted(LAYERS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--methods", nargs="+", default=list(METHODS[1:]), choices=METHODS[1:])
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="fp32", choices=["fp32", "bfloat16", "float16"])
    p.add_argument("--reps", type=int, default=5, help="timed (forward, method) pairs per row")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"rows appended here (default {DEFAULT_CSV})")
    p.add_argument("--no-csv", action="store_true", help="print only")
    p.add_argument("--table", type=Path, nargs="?", const=DEFAULT_CSV.with_suffix(".md"), metavar="MD",
                   help="write the Markdown tables of the newest run in --csv to MD (default results/cam.md); no run")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: run one method, print JSON
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.size < 32 or min(args.batches) < 1:
        p.error("--reps >= 1, --warmup >= 0, --size >= 32 and --batches >= 1 are required")
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    if args.table:
        text = table(args.csv)
        tmp = args.table.with_name(f".{args.table.name}.{os.getpid()}.{time.time_ns()}.tmp")
        with open(tmp, "x") as f:  # a fresh name, never through a planted link; then one atomic rename
            f.write(text)
        os.replace(tmp, args.table)
        print(text, end="")
        return 0
    if not args.no_csv:  # fail now, not after the run
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(args.csv.parent, os.W_OK) or (args.csv.exists() and not os.access(args.csv, os.W_OK)):
            p.error(f"--csv: {args.csv} is not writable")

    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M")
    rows = []
    print("model          B    method            median_ms   forward_ms  overhead_ms  images/s   peak_mb")
    base = [sys.executable, __file__, "--one", "--size", str(args.size), "--device", args.device, "--amp", args.amp]
    base += ["--reps", str(args.reps), "--warmup", str(args.warmup), "--threads", str(args.threads)]

    def child(cmd: list[str]) -> dict | None:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print("  failed: " + (done.stderr.strip().splitlines() or ["(no output)"])[-1])
            return None
        return json.loads(done.stdout.strip().splitlines()[-1])

    for model in args.models:
        for batch in args.batches:
            shape = ["--model", model, "--batch", str(batch)]
            timing = child(base + shape + ["--methods", *args.methods]) or {}
            for method in args.methods:
                if method not in timing:
                    continue
                r = timing[method] | (child(base + shape + ["--method", method]) or {"peak_mb": float("nan")})
                row = {"date": date, "model": model, "layer": LAYERS[model], "method": method, "B": batch}
                row |= {"size": args.size, "amp": args.amp, "reps": args.reps}
                row |= {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                rows.append(row)
                print(
                    f"{model:<14} {batch:<4} {method:<17} {r['median_ms']:>9.1f} {r['forward_ms']:>12.1f} "
                    f"{r['overhead_ms']:>12.1f} {r['images_per_s']:>9.1f} {r['peak_mb']:>9.1f}",
                    flush=True,
                )
    if rows and not args.no_csv:
        append_rows(args.csv, rows)
        print(f"appended {len(rows)} rows to {args.csv}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
