"""Training throughput of ``sgc-train --method sgc``: saliency masks read from a MaskCache versus computed
per sample inside the data loader (what the research code does with U²-Net), same model, same run.

    .venv/bin/python benchmarks/bench_train.py                          # OpenCV spectral residual, CPU
    .venv/bin/python benchmarks/bench_train.py --provider u2netp-random  # small U²-Net, random weights
    .venv/bin/python benchmarks/bench_train.py --image-size 224 --images 256 -b 32 --device cuda

For each provider: build the cache once (timed: ``precompute_s``), then train one epoch with masks from
the cache and one epoch with masks computed in ``__getitem__`` (``ProviderMasks``), each from the same
initial weights, and report images/s of the whole epoch (loading + forward + backward + step). A
one-step warm-up runs first. Rows are appended to ``benchmarks/results/train.csv``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sgc_fast.data.views import MultiViewDataset, ProviderMasks, collate_views  # noqa: E402
from sgc_fast.train.loop import JsonlLog, consistency_term, train_one_epoch  # noqa: E402
from sgc_fast.train.models import build_model  # noqa: E402

CSV = ROOT / "benchmarks" / "results" / "train.csv"
COLUMNS = ("date", "device", "torch", "arch", "method", "image_size", "batch", "images", "workers", "provider",
           "masks", "precompute_s", "epoch_s", "images_per_s", "speedup_vs_loader")
PROVIDERS = ("opencv", "u2netp-random", "u2net-random")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} cpu x{os.cpu_count()}"


def make_provider(name: str, workdir: Path, device: torch.device):
    """A saliency provider; the U²-Net variants get random weights written to a temporary file."""
    if name == "opencv":
        from sgc_fast.saliency.providers import OpenCVStaticProvider

        return OpenCVStaticProvider()
    from sgc_fast.saliency.providers import U2NetProvider
    from sgc_fast.saliency.u2net import U2Net

    small = name == "u2netp-random"
    torch.manual_seed(0)
    path = workdir / ("u2netp.pth" if small else "u2net.pth")
    torch.save(U2Net(small=small).state_dict(), path)
    return U2NetProvider(path, small=small, device="cpu" if device.type == "cpu" else device)


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


def run_epoch(args, base, masks, init_state, device) -> float:
    """Seconds for one training epoch over ``base`` with ``masks``."""
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
    train_one_epoch(model, loader, opt, method="sgc", term_fn=term, lambda_=0.5, device=device, epoch=0, log=log,
                    progress=False)
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
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)

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
        CSV.parent.mkdir(parents=True, exist_ok=True)
        new = not CSV.exists()
        with open(CSV, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            w.writerows(rows)
        print(f"\nappended {len(rows)} rows to {CSV.relative_to(ROOT)}")
    return rows


if __name__ == "__main__":
    main()
