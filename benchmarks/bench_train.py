"""Training throughput of ``sgc-train --method sgc``: saliency masks read from a MaskCache versus computed
per sample inside the data loader (what the research code does with U²-Net), same model, same run.

    .venv/bin/python benchmarks/bench_train.py                          # OpenCV spectral residual, CPU
    .venv/bin/python benchmarks/bench_train.py --provider u2netp-random  # small U²-Net, random weights
    .venv/bin/python benchmarks/bench_train.py --image-size 224 --images 256 -b 32 --device cuda
    .venv/bin/python benchmarks/bench_train.py --precision fp32 --precision bf16     # mixed precision rows

For each provider: build the cache once (timed: ``precompute_s``), then train one epoch with masks from
the cache and one epoch with masks computed in ``__getitem__`` (``ProviderMasks``), each from the same
initial weights, and report images/s of the whole epoch (loading + forward + backward + step). A
one-step warm-up runs first. Rows are appended to ``benchmarks/results/train.csv``.

``--precision P`` (repeatable: fp32, bf16, fp16) measures instead one sgc epoch per precision (autocast, a
GradScaler for fp16; masks from the data set's ground truth, so only the step differs), each in its own
process so that the peak memory is that precision's: peak RSS of the process on the CPU (the interpreter and
torch included, the same for every row), ``torch.cuda.max_memory_allocated`` on a GPU. The precisions run
round-robin ``--repeats`` times and the median epoch is reported, with the ratio to the first precision.
Rows go to ``benchmarks/results/train_precision.csv``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import append_rows, device_name, peak_rss_mb, report, run_child, u2net_weights, without_options  # noqa: E402, I001

from sgc_fast.data.views import GroundTruthMasks, MultiViewDataset, ProviderMasks, collate_views  # noqa: E402
from sgc_fast.train.loop import AMP, JsonlLog, consistency_term, train_one_epoch  # noqa: E402
from sgc_fast.train.models import build_model  # noqa: E402

CSV = ROOT / "benchmarks" / "results" / "train.csv"
COLUMNS = ("date", "device", "torch", "arch", "method", "image_size", "batch", "images", "workers", "provider",
           "masks", "precompute_s", "epoch_s", "images_per_s", "speedup_vs_loader")
PROVIDERS = ("opencv", "u2netp-random", "u2net-random")
PRECISION_CSV = ROOT / "benchmarks" / "results" / "train_precision.csv"
PRECISION_COLUMNS = ("date", "device", "torch", "arch", "method", "image_size", "batch", "images", "precision",
                     "repeats", "epoch_s", "images_per_s", "peak_mb", "memory", "speedup_vs_first")


def make_provider(name: str, workdir: Path, device: torch.device):
    """A saliency provider; the U²-Net variants get random weights written to a temporary file."""
    if name == "opencv":
        from sgc_fast.saliency.providers import OpenCVStaticProvider

        return OpenCVStaticProvider()
    from sgc_fast.saliency.providers import U2NetProvider

    small = name == "u2netp-random"
    return U2NetProvider(u2net_weights(workdir, small), small=small, device="cpu" if device.type == "cpu" else device)


def build_cache(path: Path, base, provider, image_size: int, batch: int) -> tuple[object, float]:
    from sgc_fast.saliency.cache import MaskCache
    from sgc_fast.saliency.transforms import center_view_params, center_view_transform

    center = center_view_transform(image_size)

    def load(indices):
        return torch.stack([center(base[i][0]) for i in indices])

    ids = [base.image_id(i) for i in range(len(base))]
    t0 = time.perf_counter()
    cache = MaskCache.build(path, ids, provider, load, key_extra={"transform": center_view_params(image_size)},
                            batch_size=batch, progress=False)
    return cache, time.perf_counter() - t0


def run_epoch(args, base, masks, init_state, device, precision: str = "fp32") -> float:
    """Seconds for one training epoch over ``base`` with ``masks`` (autocast at ``precision``)."""
    model = build_model(args.arch, len(base.classes), log=lambda *_: None)
    model.load_state_dict(init_state)
    model.to(device)
    ds = MultiViewDataset(base, "sgc", args.image_size, masks=masks, seed=0)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        collate_fn=collate_views, drop_last=True, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    term = consistency_term("sgc", args.image_size, 0.5)
    log = JsonlLog(None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    amp = AMP({"fp32": "none"}.get(precision, precision), device)
    train_one_epoch(model, loader, opt, method="sgc", term_fn=term, lambda_=0.5, device=device, epoch=0, log=log,
                    progress=False, amp=amp)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--provider", action="append", choices=PROVIDERS, help="repeatable (default: opencv)")
    p.add_argument("-a", "--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("-j", "--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", action="append", choices=("fp32", "bf16", "fp16"),
                   help="repeatable: one sgc epoch per precision instead of the provider comparison")
    p.add_argument("--repeats", type=int, default=3, help="--precision: round-robin repeats (median reported)")
    p.add_argument("--one-precision", default=None, help=argparse.SUPPRESS)  # internal: one measuring process
    p.add_argument("--csv", default=None, help="--precision: CSV to append to (default "
                                               "benchmarks/results/train_precision.csv)")
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.one_precision:
        return measure_precision(args, device)
    if args.precision:
        return precision_rows(args, argv if argv is not None else sys.argv[1:], device)

    from sgc_fast.data.synthetic import SyntheticShapes

    base = SyntheticShapes("train", size=args.image_size, length=args.images)
    torch.manual_seed(0)
    init_state = build_model(args.arch, len(base.classes), log=lambda *_: None).state_dict()
    # Warm-up (allocator, oneDNN primitives) on a few images with ground-truth-free all-ones masks.
    warm = torch.utils.data.Subset(base, range(args.batch_size))
    warm.classes = base.classes
    run_epoch(args, warm, [torch.ones(args.image_size, args.image_size, dtype=torch.bool).numpy()] * args.images,
              init_state, device)

    rows = []
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    common = {"date": stamp, "device": device_name(device), "torch": torch.__version__, "arch": args.arch,
              "method": "sgc", "image_size": args.image_size, "batch": args.batch_size, "images": args.images,
              "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.provider or ["opencv"]:
            provider = make_provider(name, Path(tmp), device)
            cache, pre_s = build_cache(Path(tmp) / f"{name}.sgcmask", base, provider, args.image_size, args.batch_size)
            cache_s = run_epoch(args, base, cache, init_state, device)
            loader_s = run_epoch(args, base, ProviderMasks(provider), init_state, device)
            trained = (args.images // args.batch_size) * args.batch_size
            for masks, secs in (("loader", loader_s), ("cache", cache_s)):
                rows.append({**common, "provider": provider.name, "masks": masks,
                             "precompute_s": f"{pre_s:.2f}" if masks == "cache" else "",
                             "epoch_s": f"{secs:.2f}", "images_per_s": f"{trained / secs:.1f}",
                             "speedup_vs_loader": f"{loader_s / secs:.2f}"})

    print(f"\n{common['device']}, torch {torch.__version__}, {args.arch}, S={args.image_size}, "
          f"{args.images} images, b={args.batch_size}, workers={args.workers}: one sgc training epoch\n")
    print("| provider | masks | precompute s | epoch s | images/s | vs loader |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['provider']} | {r['masks']} | {r['precompute_s'] or '-'} | {r['epoch_s']} | "
              f"{r['images_per_s']} | {r['speedup_vs_loader']}x |")
    if not args.no_csv:
        append_rows(CSV, COLUMNS, rows)
    return rows


def measure_precision(args, device) -> dict:
    """(child process) one warm-up step set, then one timed epoch at ``--one-precision``; prints JSON."""
    from sgc_fast.data.synthetic import SyntheticShapes

    torch.set_num_threads(torch.get_num_threads())
    base = SyntheticShapes("train", size=args.image_size, length=args.images)
    torch.manual_seed(0)
    init_state = build_model(args.arch, len(base.classes), log=lambda *_: None).state_dict()
    masks = GroundTruthMasks(base, args.image_size)
    warm = torch.utils.data.Subset(base, range(args.batch_size))
    warm.classes = base.classes
    run_epoch(args, warm, masks, init_state, device, args.one_precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    secs = run_epoch(args, base, masks, init_state, device, args.one_precision)
    if device.type == "cuda":
        peak, memory = torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    else:
        peak, memory = peak_rss_mb(), "process peak RSS"
    out = {"epoch_s": secs, "peak_mb": peak, "memory": memory}
    report(out)
    return out


def precision_rows(args, argv: list[str], device) -> list[dict]:
    cleaned = without_options(argv, ("--precision", "--repeats"))  # the child measures one precision
    runs: dict[str, list[dict]] = {p: [] for p in args.precision}
    for _ in range(args.repeats):
        for prec in args.precision:
            runs[prec].append(run_child(__file__, [*cleaned, "--one-precision", prec], f"the {prec} run"))
    trained = (args.images // args.batch_size) * args.batch_size
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    first = statistics.median(r["epoch_s"] for r in runs[args.precision[0]])
    rows = []
    for prec, rs in runs.items():
        secs = statistics.median(r["epoch_s"] for r in rs)
        rows.append({"date": stamp, "device": device_name(device), "torch": torch.__version__, "arch": args.arch,
                     "method": "sgc", "image_size": args.image_size, "batch": args.batch_size, "images": args.images,
                     "precision": prec, "repeats": args.repeats, "epoch_s": f"{secs:.2f}",
                     "images_per_s": f"{trained / secs:.1f}", "peak_mb": f"{max(r['peak_mb'] for r in rs):.0f}",
                     "memory": rs[0]["memory"], "speedup_vs_first": f"{first / secs:.2f}"})
    print(f"\n{rows[0]['device']}, torch {torch.__version__}, {args.arch}, S={args.image_size}, {args.images} images, "
          f"b={args.batch_size}: one sgc epoch, median of {args.repeats}\n")
    print("| precision | epoch s | images/s | peak MB | vs first |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['epoch_s']} | {r['images_per_s']} | {r['peak_mb']} ({r['memory']}) | "
              f"{r['speedup_vs_first']}x |")
    if not args.no_csv:
        append_rows(Path(args.csv) if args.csv else PRECISION_CSV, PRECISION_COLUMNS, rows)
    return rows


if __name__ == "__main__":
    main()
