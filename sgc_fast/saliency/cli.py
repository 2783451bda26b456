"""``sgc-saliency``: precompute one split's saliency masks into a mask cache (:class:`MaskCache`).

The masks are computed on the centre view that training uses (``center_view_transform(S)``:
Resize(round(S·256/224)) + CenterCrop(S) + ImageNet Normalize), batched, with a progress bar.
Examples::

    sgc-saliency /data/cub --split train --provider u2net --weights pretrain/u2net/u2net.pth --device cuda
    sgc-saliency /data/CUB_200_2011 --dataset cub --provider u2net --weights u2net.pth --device cuda -b 64 --amp bf16
    sgc-saliency /data/cub --split train --provider opencv -b 64 -j 8
    sgc-saliency --dataset synthetic --split train --image-size 64 --provider opencv --out masks/syn.sgcmask

Default output: ``<data>/masks/<split>-<provider>-<S>.sgcmask`` (``./masks/synthetic-…`` without a
data directory). Training opens it with ``MaskCache.open(path, cache_key(dataset, S))``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from . import PROVIDERS, get_provider, key_extra
from .cache import MaskCache
from .transforms import center_view_transform

__all__ = ["build_parser", "main"]

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sgc-saliency", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", nargs="?", default=None, help="ImageFolder root: <data>/<split>/<class>/<image>")
    p.add_argument("--dataset", default="folder",
                   choices=("folder", "synthetic", "cub", "aircraft", "fgvc", "cars", "flowers", "imagenet"),
                   help="cub, aircraft, cars, flowers, imagenet: the split sgc-train reads with the same --dataset "
                        "(native layout or ImageFolder copy), so the cache matches its image list")
    p.add_argument("--class-list", default=None, help="imagenet: wnids, one per line (as sgc-train)")
    p.add_argument("--split", default="train")
    p.add_argument("--provider", default="u2net", choices=PROVIDERS)
    p.add_argument("--weights", default=None, help="U²-Net weight file (official u2net.pth / u2netp.pth)")
    p.add_argument("--threshold", default=None,
                   help="mask threshold on the min-max map: a float, or 'otsu' (OpenCV); default 0.5 / otsu")
    p.add_argument("--working-size", type=int, default=None,
                   help="U²-Net: run at this size and resize the map back (default: the view size, as upstream)")
    p.add_argument("--image-size", type=int, default=224, help="S: the centre-view size the masks are for")
    p.add_argument("--amp", default=None, choices=("bf16", "fp16"),
                   help="U²-Net under autocast (tensor cores on a GPU); recorded in the cache key")
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("-j", "--workers", type=int, default=DEFAULT_WORKERS, help="image-loading workers")
    p.add_argument("--device", default=None, help="where U²-Net runs (default: cuda if available)")
    p.add_argument("--out", default=None, help="output file (default: <data>/masks/<split>-<provider>-<S>.sgcmask)")
    p.add_argument("--seed", type=int, default=0, help="synthetic: data-set seed")
    p.add_argument("--synthetic-size", type=int, default=None, help="synthetic: native image size (default max(S, 32))")
    p.add_argument("--bias", type=float, default=0.0, help="synthetic: background/class correlation")
    p.add_argument("--length", type=int, default=None,
                   help="synthetic: number of images (default: the data set's; training expects the default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    return p


def _dataset(args):
    if args.dataset == "synthetic":
        from ..data.synthetic import SyntheticShapes

        size = args.synthetic_size or max(args.image_size, 32)
        return SyntheticShapes(split=args.split, size=size, length=args.length, bias=args.bias, seed=args.seed)
    if args.data is None:
        raise SystemExit("sgc-saliency: give the data directory (positional) or --dataset synthetic")
    if args.dataset != "folder":
        from ..data.layouts import open_dataset

        if args.split not in ("train", "val", "test"):
            raise SystemExit(f"sgc-saliency: --split: expected train, val or test for --dataset {args.dataset}, "
                             f"got {args.split!r}")
        try:
            train, val, _ = open_dataset(args.dataset, args.data, class_list=args.class_list)
        except (FileNotFoundError, ValueError, ImportError) as exc:
            raise SystemExit(f"sgc-saliency: {exc}") from None
        return train if args.split == "train" else val
    from ..data.folder import ImageFolder

    return ImageFolder(args.data, args.split)


class _CenterViews(Dataset):
    """``i -> (centre view [3, S, S], i)`` of a data set whose items are ``(PIL image, label)``."""

    def __init__(self, base, image_size: int) -> None:
        self.base, self.transform = base, center_view_transform(image_size)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.transform(self.base[i][0]), i


class _SequentialBatches:
    """``load_batch_fn`` for :meth:`MaskCache.build` backed by a DataLoader (parallel decoding): serves the
    consecutive chunks ``[0, b), [b, 2b), …`` in order and checks that those are what is asked for."""

    def __init__(self, base, image_size: int, batch_size: int, workers: int) -> None:
        self.loader = DataLoader(_CenterViews(base, image_size), batch_size=batch_size, shuffle=False,
                                 num_workers=workers, persistent_workers=False)
        self._it = None

    def __call__(self, indices: list[int]) -> torch.Tensor:
        if self._it is None:
            self._it = iter(self.loader)
        images, got = next(self._it)
        if got.tolist() != list(indices):
            raise RuntimeError(f"load_batch_fn: asked for samples {indices[:3]}…, the loader produced {got[:3].tolist()}…")
        return images


def _threshold(value: str | None):
    if value is None or value == "otsu":
        return value
    try:
        t = float(value)
    except ValueError:
        raise SystemExit(f"sgc-saliency: --threshold: expected a float or 'otsu', got {value!r}") from None
    if not 0.0 <= t < 1.0:  # NaN fails too; the maps are min-max normalised to [0, 1]: >= 1 keeps no pixel
        raise SystemExit(f"sgc-saliency: --threshold: expected a number in [0, 1) (the maps are min-max "
                         f"normalised) or 'otsu', got {value!r}")
    return t


def default_out(args) -> Path:
    name = f"{args.split}-{args.provider}-{args.image_size}.sgcmask"
    if args.data is not None:
        return Path(args.data) / "masks" / name
    return Path("masks") / f"{args.dataset}-{name}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.image_size < 8:
        raise SystemExit(f"sgc-saliency: --image-size: expected >= 8, got {args.image_size}")
    base = _dataset(args)
    try:
        provider = get_provider(args.provider, image_size=args.image_size, weights=args.weights, device=args.device,
                                threshold=_threshold(args.threshold), working_size=args.working_size, dataset=base,
                                amp=args.amp)
    except (ValueError, ImportError, FileNotFoundError) as e:
        raise SystemExit(f"sgc-saliency: {e}") from None
    out = Path(args.out) if args.out else default_out(args)
    from ..files import check_writable, stale_temps

    try:
        check_writable(out, "--out", folder=False)
    except ValueError as exc:
        raise SystemExit(f"sgc-saliency: {exc}") from None
    for tmp in stale_temps(out):  # what a killed build left behind
        print(f"sgc-saliency: removing {tmp}, the remains of an interrupted build")
        tmp.unlink()
    ids = [base.image_id(i) for i in range(len(base))]
    loader = _SequentialBatches(base, args.image_size, args.batch_size, args.workers) if provider.needs_images else None
    t0 = time.perf_counter()
    cache = MaskCache.build(out, ids, provider, loader, key_extra=key_extra(base, args.image_size),
                            batch_size=args.batch_size, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    masks = cache.masks(range(len(cache))) if len(cache) <= 4096 else None
    cover = f", mean foreground {masks.float().mean().item():.3f}" if masks is not None else ""
    print(f"sgc-saliency: wrote {len(cache)} masks of {cache.size}x{cache.size} ({provider.name}) to {out} "
          f"in {seconds:.1f} s{cover}")
    return 0


def run(argv: list[str] | None = None) -> int:
    """Console-script entry point (``sgc-saliency``): 0 on success, one line and status 2 for a user error."""
    from ..console import run_cli

    return run_cli(main, "sgc-saliency", argv)
