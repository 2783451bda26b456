"""``sgc-train``: supervised SGC / CGC / L2 / baseline training and evaluation of a torchvision ResNet.

Command line compatible with the research scripts (``train_eval_sgc.py``: positional data dir, ``-a``,
``-j``, ``-b``, ``--lr``, ``--lambda``, ``-t``, ``-p``, ``--epochs``, ``--save_dir``, ``--log_dir``,
``--dataset``, ``--resume``, ``-e``, ``--pretrained``, ``--seed``), plus ``--method``, ``--saliency``,
``--image-size``, ``--device``, ``--weights``, ``--schedule``, ``--bias``, ``--limit``. Examples::

    sgc-train --dataset synthetic --image-size 64 --epochs 10 -b 32 --lr 0.01
    sgc-train /data/cub --dataset cub -a resnet50 --pretrained --saliency masks/cub_train_224.npy
    sgc-train /data/cub --dataset cub --resume checkpoint/last.pt           # continue
    sgc-train /data/cub --dataset cub --resume checkpoint/best.pt -e        # evaluate
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from ..data.views import (
    METHODS,
    CenterViewDataset,
    GroundTruthMasks,
    MultiViewDataset,
    ProviderMasks,
    collate_views,
)
from .checkpoint import FORMAT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .loop import JsonlLog, consistency_term, evaluate, train_one_epoch
from .models import ARCHS, OUTPUT_STRIDES, build_model, export_state_dict

__all__ = ["DATASETS", "build_parser", "main", "run"]

# --dataset -> (number of classes, validation folder); None = from the data (spec §5.2, SGC values).
DATASETS = {
    "synthetic": (None, "val"),
    "imagenet": (100, "val"),  # ImageNet-100, as SGC; use --dataset folder for ImageNet-1k
    "cub": (200, "val"),
    "aircraft": (100, "val"),
    "cars": (196, "val"),
    "flowers": (102, "val"),
    "folder": (None, "val"),
}
STEP_EPOCHS, STEP_GAMMA = 30, 0.1  # step schedule: lr x 0.1 every 30 epochs
MOMENTUM, WEIGHT_DECAY = 0.9, 1e-4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sgc-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", nargs="?", default=None, help="dataset root with train/ and val/ (not needed for synthetic)")
    p.add_argument("-a", "--arch", default="resnet18", choices=ARCHS)
    p.add_argument("--method", default="sgc", choices=METHODS)
    p.add_argument("--dataset", default="synthetic", choices=tuple(DATASETS))
    p.add_argument("--saliency", default=None,
                   help="SGC masks: PATH to a mask cache (sgc_fast.saliency.MaskCache), 'ground-truth' "
                        "(synthetic), or 'opencv' (computed per sample in the loader; slow)")
    p.add_argument("--image-size", type=int, default=224, help="S: training / validation view size")
    p.add_argument("--output-stride", type=int, default=32, choices=OUTPUT_STRIDES,
                   help="16: layer4 without downsampling, CAMs of S/16 (7x7 at --image-size 112)")
    p.add_argument("-j", "--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers (default: min(4, CPUs))")
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("-b", "--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--schedule", default="step", choices=("step", "cosine"))
    p.add_argument("--lambda", dest="lambda_", type=float, default=0.5, help="weight of the consistency term")
    p.add_argument("-t", "--temperature", type=float, default=0.5)
    p.add_argument("-p", "--print-freq", type=int, default=10)
    p.add_argument("--save_dir", default="checkpoint")
    p.add_argument("--log_dir", default="logs")
    p.add_argument("--resume", default="", help="checkpoint to continue from (or to evaluate with -e)")
    p.add_argument("-e", "--evaluate", action="store_true", help="only evaluate on the validation split")
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights from the local torch hub cache")
    p.add_argument("--weights", default=None, help="initial weights: a local state dict (research checkpoints too)")
    p.add_argument("--seed", type=int, default=None, help="seed (also turns on deterministic algorithms); default 0 for views")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--bias", type=float, default=0.0, help="synthetic only: background/class correlation")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _datasets(args):
    """(train base, val base, classes)."""
    if args.dataset == "synthetic":
        from ..data.synthetic import SyntheticShapes

        size = max(args.image_size, 32)
        train = SyntheticShapes(split="train", size=size, bias=args.bias, seed=args.seed or 0)
        val = SyntheticShapes(split="val", size=size, bias=args.bias, seed=args.seed or 0)
        return train, val, list(train.classes)
    from ..data.folder import ImageFolder

    if args.data is None:
        raise SystemExit(f"sgc-train: --dataset {args.dataset} needs the data directory (positional argument)")
    expected, val_split = DATASETS[args.dataset]
    root = Path(args.data)
    if args.dataset == "cub" and not (root / "val").is_dir() and (root / "test").is_dir():
        val_split = "test"  # CUB is often laid out with test/ (the CGC scripts use it)
    train = ImageFolder(root, "train")
    if expected is not None and len(train.classes) != expected:
        raise SystemExit(f"sgc-train: --dataset {args.dataset} expects {expected} classes, {root / 'train'} has "
                         f"{len(train.classes)}; use --dataset folder to take the class count from the data")
    val = ImageFolder(root, val_split, classes=train.classes)
    return train, val, list(train.classes)


def _mask_source(args, base):
    if args.method != "sgc":
        return None
    sal = args.saliency
    if sal is None:
        if args.dataset == "synthetic":
            sal = "ground-truth"
        else:
            raise SystemExit("sgc-train: --method sgc needs --saliency PATH (a mask cache from the saliency "
                             "precompute), or 'opencv' to compute masks in the loader")
    if sal == "ground-truth":
        return GroundTruthMasks(base, args.image_size)
    if sal == "opencv":
        from ..saliency.providers import OpenCVStaticProvider

        return ProviderMasks(OpenCVStaticProvider())
    return open_mask_cache(sal, base, args.image_size)


def open_mask_cache(path, base, image_size: int):
    """Open a mask cache built for ``base`` (same ordered image ids) and the centre view of size S."""
    from ..saliency.cache import MaskCache, StaleMaskCacheError
    from ..saliency.transforms import center_view_params

    ids = [base.image_id(i) for i in range(len(base))] if hasattr(base, "image_id") else None
    cache = MaskCache.open(path, MaskCache.make_key(image_ids=ids))
    transform = cache.key.get("extra", {}).get("transform")
    if transform is not None and transform != MaskCache.make_key(key_extra=center_view_params(image_size))["extra"]:
        raise StaleMaskCacheError(f"mask cache {path} was built for the centre view {transform}, this run uses "
                                  f"--image-size {image_size}")
    if cache.size != image_size:
        raise SystemExit(f"sgc-train: mask cache {path} holds {cache.size}x{cache.size} masks, --image-size is {image_size}")
    if len(cache) != len(base):
        raise SystemExit(f"sgc-train: mask cache {path} has {len(cache)} masks, the train split {len(base)} images")
    return cache


def _device(args) -> torch.device:
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _scheduler(args, optimizer):
    if args.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(args.epochs, 1))
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP_EPOCHS, gamma=STEP_GAMMA)


def _plain_args(args) -> dict:
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in vars(args).items()}


def main(argv: list[str] | None = None) -> dict:
    """Run ``sgc-train``; returns ``{"acc1", "acc5", "best_acc1", "epoch"}`` (evaluation: acc1/acc5)."""
    args = build_parser().parse_args(argv)
    progress = not args.no_progress
    seed = 0 if args.seed is None else args.seed
    if args.seed is not None:
        torch.manual_seed(args.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    device = _device(args)

    train_base, val_base, classes = _datasets(args)
    limit = args.limit
    train_idx = range(min(limit, len(train_base))) if limit else None
    val_idx = range(min(limit, len(val_base))) if limit else None
    val_set = CenterViewDataset(val_base, args.image_size, val_idx)
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                            pin_memory=device.type == "cuda")

    ckpt = load_checkpoint(args.resume) if args.resume else None
    if ckpt is not None and ckpt.get("format") != FORMAT:
        # A foreign checkpoint (e.g. the research code's): take only its weights.
        args.weights, ckpt = args.resume, None
    model = build_model(args.arch, len(classes), pretrained=args.pretrained and ckpt is None, weights=args.weights,
                        output_stride=args.output_stride)
    if ckpt is not None:
        if ckpt["arch"] != args.arch or ckpt["num_classes"] != len(classes):
            raise SystemExit(f"sgc-train: {args.resume} is a {ckpt['arch']} with {ckpt['num_classes']} classes, "
                             f"this run a {args.arch} with {len(classes)}")
        stride = ckpt.get("output_stride", 32)
        if stride != args.output_stride:
            raise SystemExit(f"sgc-train: {args.resume} was trained with --output-stride {stride}, this run uses "
                             f"{args.output_stride}")
        model.load_state_dict(ckpt["model"])
    model.to(device)

    if args.evaluate:
        acc1, acc5 = evaluate(model, val_loader, device, progress)
        print(f"evaluate: top-1 {acc1:.3f}  top-5 {acc5:.3f}  ({len(val_set)} images)")
        return {"acc1": acc1, "acc5": acc5, "epoch": ckpt["epoch"] if ckpt else 0}

    train_set = MultiViewDataset(train_base, args.method, args.image_size, masks=_mask_source(args, train_base),
                                 indices=train_idx, seed=seed)
    batch_size = args.batch_size
    if len(train_set) < batch_size:
        print(f"sgc-train: {len(train_set)} training images < batch size {batch_size}; using batch size {len(train_set)}")
        batch_size = len(train_set)
    data_generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=RandomSampler(train_set, generator=data_generator),
                              num_workers=args.workers, collate_fn=collate_views, pin_memory=device.type == "cuda",
                              drop_last=True)  # drop_last: a batch of 1 has no negatives (spec §8 item 4)

    # The classifier is already sized for the data: the optimiser sees every parameter (spec §8 item 6).
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = _scheduler(args, optimizer)
    term_fn = consistency_term(args.method, args.image_size, args.temperature)
    start_epoch, best_acc1, acc1, acc5 = 0, 0.0, 0.0, 0.0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_acc1 = int(ckpt["epoch"]), float(ckpt["best_acc1"])
        acc1, acc5 = float(ckpt["acc1"]), float(ckpt["acc5"])
        set_rng_state(ckpt["rng"], data_generator)
        print(f"resumed {args.resume} at epoch {start_epoch} (best top-1 {best_acc1:.3f})")

    log = JsonlLog(Path(args.log_dir) / "train.jsonl")
    log.write(kind="start", start_epoch=start_epoch, args=_plain_args(args), device=str(device),
              train_images=len(train_set), val_images=len(val_set), classes=len(classes))
    save_dir = Path(args.save_dir)
    try:
        for epoch in range(start_epoch, args.epochs):
            train_set.set_epoch(epoch)
            stats = train_one_epoch(model, train_loader, optimizer, method=args.method, term_fn=term_fn,
                                    lambda_=args.lambda_, device=device, epoch=epoch, log=log,
                                    print_freq=args.print_freq, progress=progress)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            acc1, acc5 = evaluate(model, val_loader, device, progress)
            is_best = acc1 > best_acc1 or epoch == start_epoch and best_acc1 == 0.0
            best_acc1 = max(best_acc1, acc1)
            log.write(kind="val", epoch=epoch, acc1=acc1, acc5=acc5, best_acc1=best_acc1, lr=lr,
                      train_loss=stats["loss"], train_term=stats["term"])
            print(f"epoch {epoch}: loss {stats['loss']:.4f} (term {stats['term']:.4f})  val top-1 {acc1:.3f} "
                  f"top-5 {acc5:.3f}  best {best_acc1:.3f}")
            state = {
                "format": FORMAT, "arch": args.arch, "num_classes": len(classes), "classes": classes,
                "output_stride": args.output_stride,
                "method": args.method, "epoch": epoch + 1, "model": export_state_dict(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "acc1": acc1, "acc5": acc5, "best_acc1": best_acc1, "rng": rng_state(data_generator),
                "args": _plain_args(args),
            }
            save_checkpoint(save_dir / "last.pt", state)
            if is_best:
                save_checkpoint(save_dir / "best.pt", state)
    finally:
        log.close()
    return {"acc1": acc1, "acc5": acc5, "best_acc1": best_acc1, "epoch": args.epochs}


def run() -> int:
    """Console-script entry point (``sgc-train = "sgc_fast.train.cli:run"``): exit status 0 on success.
    (``main`` returns the metrics dict, which ``sys.exit`` would treat as a failure.)"""
    main()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
