"""``sgc-train``: supervised SGC / CGC / L2 / baseline training and evaluation of a torchvision ResNet.

Command line compatible with the research scripts (``train_eval_sgc.py``: positional data dir, ``-a``,
``-j``, ``-b``, ``--lr``, ``--lambda``, ``-t``, ``-p``, ``--epochs``, ``--save_dir``, ``--log_dir``,
``--dataset``, ``--resume``, ``-e``, ``--pretrained``, ``--seed``), plus ``--method``, ``--saliency``,
``--image-size``, ``--device``, ``--weights``, ``--schedule``, ``--bias``, ``--limit``, ``--recipe``,
``--amp``, ``--negatives`` and the rest below. Several processes (GPUs, machines) through ``torchrun``.
Examples::

    sgc-train --dataset synthetic --image-size 64 --epochs 10 -b 32 --lr 0.01
    sgc-train /data/cub --dataset cub --recipe sgc --pretrained --saliency masks/cub_train_224.sgcmask
    torchrun --nproc_per_node 4 -m sgc_fast.train /data/cub --dataset cub --recipe sgc --amp bf16 ...
    sgc-train /data/cub --dataset cub --resume checkpoint/last.pt           # continue
    sgc-train /data/cub --dataset cub --resume checkpoint/best.pt -e        # evaluate
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.layouts import open_dataset
from ..data.synthetic import DEFAULT_CLASSES, SHAPES
from ..data.views import (
    METHODS,
    CenterViewDataset,
    GroundTruthMasks,
    MultiViewDataset,
    ProviderMasks,
    collate_views,
)
from ..files import check_writable, stale_temps
from .checkpoint import FORMAT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .dist import EpochSampler, World, broadcast_buffers, broadcast_object, setup, teardown
from .loop import AMP, JsonlLog, SemiSupervisedLoader, TensorBoard, consistency_term, evaluate, train_one_epoch
from .models import ARCHS, OUTPUT_STRIDES, build_model, export_state_dict

__all__ = ["DATASETS", "RECIPES", "RUN_ARGS", "build_parser", "main", "run"]

# --dataset -> (number of classes, validation folder of an ImageFolder layout); None = from the data (spec §5.2,
# SGC values). The native layouts (sgc_fast.data.layouts) are read when <data>/train/ is not there.
DATASETS = {
    "synthetic": (None, "val"),
    "imagenet": (100, "val"),  # ImageNet-100, as SGC; use --dataset folder for ImageNet-1k
    "cub": (200, "val"),
    "aircraft": (100, "val"),
    "fgvc": (100, "val"),  # the research code's name for aircraft
    "cars": (196, "val"),
    "flowers": (102, "val"),
    "folder": (None, "val"),
}
STEP_EPOCHS, STEP_GAMMA = 30, 0.1  # step schedule: lr x 0.1 every 30 epochs
MOMENTUM, WEIGHT_DECAY = 0.9, 1e-4
# The research code's settings (README commands of train_eval_SGC.py / train_eval_CGC.py, upstream.md §5):
# --recipe fills whatever the command line leaves out. -b is the global batch (4 GPUs under DataParallel).
RECIPES = {
    "sgc": {"method": "sgc", "arch": "resnet50", "epochs": 200, "batch_size": 192, "lr": 0.01, "lambda_": 0.5,
            "temperature": 0.5, "schedule": "step", "print_freq": 100},
    "cgc": {"method": "cgc", "arch": "resnet50", "epochs": 90, "batch_size": 256, "lr": 0.1, "lambda_": 0.5,
            "temperature": 0.5, "schedule": "step", "print_freq": 100},
    # 1%-label ImageNet from SwAV (README of the SGC repository; upstream.md §6): head lr 5, trunk 0.02, no weight
    # decay, x0.2 at epochs 12 and 16, 50 epochs, 128 labelled + 128 unlabelled images per step.
    "semisup": {"method": "sgc", "arch": "resnet50", "epochs": 50, "batch_size": 128, "lr": 0.02, "lr_last_layer": 5.0,
                "wd": 0.0, "schedule": "multistep", "milestones": [12, 16], "gamma": 0.2, "lambda_": 0.5,
                "temperature": 0.5, "labels_fraction": 0.01, "print_freq": 100},
}
# Without --recipe (or what a recipe leaves out).
DEFAULTS = {"method": "sgc", "arch": "resnet18", "epochs": 90, "batch_size": 256, "lr": 0.1, "lambda_": 0.5,
            "temperature": 0.5, "schedule": "step", "print_freq": 10, "image_size": 224, "output_stride": 32,
            "dataset": "synthetic", "bias": 0.0, "negatives": None, "negatives_per_chunk": None, "wd": WEIGHT_DECAY,
            "milestones": [30, 60, 90], "gamma": 0.1}
# Arguments that define a run: a resume takes them from the checkpoint and refuses a command line that differs.
RUN_ARGS = ("arch", "method", "dataset", "image_size", "output_stride", "batch_size", "lambda_", "temperature",
            "single_forward",
            "schedule", "bias", "num_classes", "limit", "seed", "negatives", "negatives_per_chunk", "labels_fraction",
            "labels_subset", "lr_last_layer", "wd", "milestones", "gamma")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sgc-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    p.add_argument("data", nargs="?", default=None, help="dataset root with train/ and val/ (not for synthetic)")
    p.add_argument("--recipe", default=None, choices=tuple(RECIPES),
                   help=f"the research code's settings for what the command line leaves out: {RECIPES}")
    p.add_argument("-a", "--arch", default=d["arch"], choices=ARCHS)
    p.add_argument("--method", default=d["method"], choices=METHODS)
    p.add_argument("--dataset", default=d["dataset"], choices=tuple(DATASETS))
    p.add_argument("--class-list", default=None,
                   help="imagenet: file of wnids, one per line (default: the ImageNet-100 list of CMC shipped in "
                        "sgc_fast/data/imagenet100.txt, or the 100 folders of a prepared ImageNet-100)")
    p.add_argument("--image-check", default="header", choices=("header", "full", "none"),
                   help="scan of the image files before training: header (cheap), full (decodes every file: finds "
                        "truncated ones), none; a file that still fails to decode is replaced and counted")
    p.add_argument("--saliency", default=None,
                   help="SGC masks: PATH to a mask cache (sgc_fast.saliency.MaskCache), 'ground-truth' "
                        "(synthetic), or 'opencv' (computed per sample in the loader; slow)")
    p.add_argument("--image-size", type=int, default=d["image_size"], help="S: training / validation view size")
    p.add_argument("--output-stride", type=int, default=d["output_stride"], choices=OUTPUT_STRIDES,
                   help="16: layer4 without downsampling, CAMs of S/16 (7x7 at --image-size 112)")
    p.add_argument("-j", "--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader workers per process (default: min(4, CPUs))")
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("-b", "--batch-size", type=int, default=d["batch_size"],
                   help="global batch: split evenly over the torchrun processes, as the research code's "
                        "DataParallel splits it over GPUs")
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--lr-last-layer", type=float, default=None,
                   help="learning rate of the classifier fc (default: --lr), as the semi-supervised research script")
    p.add_argument("--wd", type=float, default=d["wd"], help="weight decay (every parameter, as the research code)")
    p.add_argument("--schedule", default=d["schedule"], choices=("step", "cosine", "multistep"),
                   help="step: x0.1 every 30 epochs; multistep: x--gamma at each of --milestones")
    p.add_argument("--milestones", type=int, nargs="+", default=d["milestones"], help="multistep: epochs")
    p.add_argument("--gamma", type=float, default=d["gamma"], help="multistep: factor")
    p.add_argument("--labels-fraction", type=float, default=None, metavar="F",
                   help="semi-supervised: cross-entropy on F of the training images per class (seeded; 0.01 = the "
                        "1%% ImageNet setting), the consistency term on all of them (pseudo-labels)")
    p.add_argument("--labels-subset", default=None, metavar="FILE",
                   help="semi-supervised: the labelled images as a file of image names, one per line (e.g. SwAV's "
                        "1percent.txt / 10percent.txt)")
    p.add_argument("--lambda", dest="lambda_", type=float, default=d["lambda_"], help="weight of the consistency term")
    p.add_argument("-t", "--temperature", type=float, default=d["temperature"])
    p.add_argument("-p", "--print-freq", type=int, default=d["print_freq"])
    p.add_argument("--negatives", default=d["negatives"], choices=("global", "local"),
                   help="contrastive negatives under torchrun: the whole global batch (default; equals one "
                        "process on the global batch) or each process's share (as the research code per GPU)")
    p.add_argument("--negatives-per-chunk", type=int, default=d["negatives_per_chunk"], metavar="N",
                   help="negatives only within chunks of N samples of each process's batch (the research "
                        "code's objective on one device: N = batch / #GPUs)")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                   help="autocast precision of the forward (fp16 adds a GradScaler)")
    p.add_argument("--channels-last", action="store_true", help="model and views in channels_last memory format")
    p.add_argument("--single-forward", action="store_true",
                   help="the three views in one forward of 3B images (faster on a GPU at small batches; BatchNorm "
                        "then normalises them together, unlike the research code's three train-mode forwards)")
    p.add_argument("--sync-bn", action="store_true", help="torchrun: BatchNorm statistics over all processes")
    p.add_argument("--max-bad-steps", type=int, default=5, metavar="N",
                   help="a step with a non-finite loss is skipped; stop after N such steps in a row")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also write last.pt every STEPS steps inside an epoch (resumed exactly); 0: per epoch")
    p.add_argument("--allow-degenerate", action="store_true",
                   help="train even when the consistency term cannot teach anything (every mask empty, 1x1 CAMs)")
    p.add_argument("--save_dir", default="checkpoint")
    p.add_argument("--log_dir", default="logs", help="train.jsonl, and TensorBoard events when tensorboard is installed")
    p.add_argument("--resume", default="", help="checkpoint to continue from (or to evaluate with -e)")
    p.add_argument("-e", "--evaluate", action="store_true", help="only evaluate on the validation split")
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights from the local torch hub cache")
    p.add_argument("--weights", default=None, help="initial weights: a local state dict (research checkpoints too)")
    p.add_argument("--seed", type=int, default=None, help="seed (also turns on deterministic algorithms); default 0 for views")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available; "
                                                  "cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--bias", type=float, default=d["bias"], help="synthetic only: background/class correlation")
    p.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help=f"synthetic only: the first N shapes (2-{len(SHAPES)}; default {DEFAULT_CLASSES})")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def given_args(argv: list[str] | None) -> set[str]:
    """The ``dest`` of every option the command line sets explicitly."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def _fail(msg: str):
    raise SystemExit(f"sgc-train: {msg}")


def _apply_recipe(args, given: set[str]) -> None:
    if args.recipe is None:
        return
    for key, value in RECIPES[args.recipe].items():
        if key not in given:
            setattr(args, key, value)


def _validate(args) -> None:
    """Numbers that would run nonsense, refused before any work."""
    checks = [
        ("--epochs", args.epochs, args.epochs >= 1, ">= 1"),
        ("-b", args.batch_size, args.batch_size >= 2, ">= 2 (the contrast needs negatives, BatchNorm two samples)"),
        ("--lr", args.lr, math.isfinite(args.lr) and args.lr > 0, "a positive number"),
        ("--lambda", args.lambda_, math.isfinite(args.lambda_) and args.lambda_ >= 0, "a finite number >= 0"),
        ("-t", args.temperature, math.isfinite(args.temperature) and args.temperature > 0, "a positive number"),
        ("--image-size", args.image_size, args.image_size >= 32, ">= 32"),
        ("-j", args.workers, args.workers >= 0, ">= 0"),
        ("-p", args.print_freq, args.print_freq >= 1, ">= 1"),
        ("--max-bad-steps", args.max_bad_steps, args.max_bad_steps >= 1, ">= 1"),
        ("--checkpoint-every", args.checkpoint_every, args.checkpoint_every >= 0, ">= 0"),
        ("--bias", args.bias, 0.0 <= args.bias <= 1.0, "in [0, 1]"),
    ]
    if args.limit is not None:
        checks.append(("--limit", args.limit, args.limit >= 1, ">= 1 (leave it out to use every image)"))
    if args.labels_fraction is not None:
        checks.append(("--labels-fraction", args.labels_fraction, 0 < args.labels_fraction <= 1, "in (0, 1]"))
    if args.lr_last_layer is not None:
        checks.append(("--lr-last-layer", args.lr_last_layer, math.isfinite(args.lr_last_layer) and
                       args.lr_last_layer > 0, "a positive number"))
    checks.append(("--wd", args.wd, math.isfinite(args.wd) and args.wd >= 0, "a finite number >= 0"))
    checks.append(("--gamma", args.gamma, math.isfinite(args.gamma) and 0 < args.gamma <= 1, "in (0, 1]"))
    if args.negatives_per_chunk is not None:
        checks.append(("--negatives-per-chunk", args.negatives_per_chunk, args.negatives_per_chunk >= 2,
                       ">= 2 (a chunk of one sample has no negatives)"))
    for flag, value, ok, want in checks:
        if not ok:
            _fail(f"{flag}: expected {want}, got {value}")
    if args.dataset == "synthetic" and args.data is not None:
        _fail(f"the data directory {args.data!r} was given with --dataset synthetic, which never reads it; pass "
              f"--dataset folder (or cub, imagenet, ...) to train on it")
    if args.num_classes is not None and args.dataset != "synthetic":
        _fail(f"--num-classes: only the synthetic set takes a class count; --dataset {args.dataset} has its own")
    if args.num_classes is not None and not 2 <= args.num_classes <= len(SHAPES):
        _fail(f"--num-classes: expected 2..{len(SHAPES)} (the synthetic set has {len(SHAPES)} shapes), got "
              f"{args.num_classes}")
    if args.negatives == "global" and args.negatives_per_chunk is not None:
        _fail("--negatives-per-chunk: per-chunk negatives are local; drop --negatives global")
    if args.labels_fraction is not None and args.labels_subset is not None:
        _fail("--labels-subset: give the labelled images either as a fraction or as a file, not both")
    if (args.labels_fraction is not None or args.labels_subset is not None) and args.checkpoint_every:
        _fail("--checkpoint-every: mid-epoch checkpoints are not supported for semi-supervised runs")
    if (args.labels_fraction is not None or args.labels_subset is not None) and args.method == "baseline":
        _fail("--labels-fraction: a semi-supervised run needs a consistency term (--method sgc, cgc or l2)")
    if args.evaluate and not args.resume and not args.weights:
        _fail("-e: evaluation needs a checkpoint (--resume PATH) or weights (--weights PATH)")


def _datasets(args, world: World):
    """(train base, val base, classes, where): the image list is scanned once, by rank 0."""
    if args.dataset == "synthetic":
        from ..data.synthetic import SyntheticShapes

        size = max(args.image_size, 32)
        n = args.num_classes or DEFAULT_CLASSES
        train = SyntheticShapes(split="train", size=size, bias=args.bias, seed=args.seed or 0, num_classes=n)
        val = SyntheticShapes(split="val", size=size, bias=args.bias, seed=args.seed or 0, num_classes=n)
        return train, val, list(train.classes), f"synthetic shapes (bias {args.bias}, seed {args.seed or 0})"
    if args.data is None:
        _fail(f"--dataset {args.dataset} needs the data directory (positional argument)")
    expected = DATASETS[args.dataset][0]
    error = shared = None
    if world.main:
        try:
            train, val, where = open_dataset(args.dataset, args.data, class_list=args.class_list,
                                             check=args.image_check)
        except (FileNotFoundError, ValueError, ImportError) as exc:
            error = str(exc)
        else:  # the other ranks take rank 0's lists instead of scanning the folder again
            shared = (train.listing(), val.listing(), where) if world.distributed else None
    error, shared = broadcast_object((error, shared), world)
    if error is not None:
        _fail(error)
    if not world.main:
        from ..data.layouts import from_listing

        train, val, where = from_listing(shared[0]), from_listing(shared[1]), shared[2]
    if expected is not None and len(train.classes) != expected:
        _fail(f"--dataset {args.dataset} expects {expected} classes, {where} has {len(train.classes)}; use "
              f"--dataset folder to take the class count from the data")
    return train, val, list(train.classes), where


def _mask_source(args, base, say):
    if args.method != "sgc":
        return None
    sal = args.saliency
    if sal is None:
        if args.dataset == "synthetic":
            sal = "ground-truth"
        else:
            _fail("--method sgc needs --saliency PATH (a mask cache from sgc-saliency), or 'opencv' to compute "
                  "masks in the loader")
    if sal == "ground-truth":
        say("saliency: the data set's ground-truth object masks")
        return GroundTruthMasks(base, args.image_size)
    if sal == "opencv":
        from ..saliency.providers import OpenCVStaticProvider

        say("saliency: OpenCV static saliency, computed per sample in the loader")
        return ProviderMasks(OpenCVStaticProvider())
    cache = open_mask_cache(sal, base, args.image_size)
    provider = cache.key.get("provider", {})
    say(f"saliency: mask cache {sal} ({provider.get('name', '?')} {provider.get('config', {})})")
    return cache


def open_mask_cache(path, base, image_size: int):
    """Open a mask cache built for ``base``: the same ordered image ids, the same data set (type and, for the
    synthetic set, its bias and class count) and the centre view of size S."""
    from ..saliency import cache_key
    from ..saliency.cache import MaskCache, StaleMaskCacheError

    try:
        cache = MaskCache.open(path, cache_key(base, image_size))
    except StaleMaskCacheError as exc:
        _fail(f"--saliency: {exc}")
    except (FileNotFoundError, ValueError) as exc:
        _fail(f"--saliency: {exc}")
    if cache.size != image_size:
        _fail(f"mask cache {path} holds {cache.size}x{cache.size} masks, --image-size is {image_size}")
    if len(cache) != len(base):
        _fail(f"mask cache {path} has {len(cache)} masks, the train split {len(base)} images")
    return cache


def _degenerate_guard(args, masks, say) -> None:
    """Refuse (unless ``--allow-degenerate``) a run whose consistency term is a constant with zero gradient: CAMs of
    one cell (the upsampled map is flat: every view has the same normalised map) or every saliency mask empty
    (every masked map is zero). Warn when most masks are empty."""
    if args.method == "baseline":
        return
    problems = []
    side = math.ceil(args.image_size / args.output_stride)
    if side <= 1:
        problems.append(f"the CAMs are {side}x{side} (--image-size {args.image_size} at --output-stride "
                        f"{args.output_stride}): a one-cell CAM upsamples to a flat map, the term is a constant")
    if args.method == "sgc" and masks is not None and hasattr(masks, "__getitem__") and hasattr(masks, "__len__"):
        if hasattr(masks, "empty_fraction"):
            empty = masks.empty_fraction()
        else:
            n = len(masks)
            idx = sorted({round(k * (n - 1) / max(min(n, 64) - 1, 1)) for k in range(min(n, 64))})
            empty = sum(not bool(np.asarray(masks[i]).any()) for i in idx) / max(len(idx), 1)
        if empty == 1.0:
            problems.append("every saliency mask is empty (threshold too high?): the masked view is blank and the "
                            "term is a constant")
        elif empty > 0.5:
            say(f"warning: {empty:.0%} of the saliency masks are empty; their samples add nothing to the term")
    if problems:
        if not args.allow_degenerate:
            _fail("; ".join(problems) + " -- nothing to learn from it; fix the setting or pass --allow-degenerate")
        say("warning (--allow-degenerate): " + "; ".join(problems))


def _scheduler(args, optimizer):
    if args.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(args.epochs, 1))
    if args.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(args.milestones), gamma=args.gamma)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP_EPOCHS, gamma=STEP_GAMMA)


def _optimizer(args, model):
    """SGD on every parameter; with ``--lr-last-layer`` the classifier is its own group at that rate (the
    semi-supervised research script: its parameters whose name holds 'head')."""
    if args.lr_last_layer is None:
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=MOMENTUM, weight_decay=args.wd)
    head = [p for n, p in model.named_parameters() if n.startswith("fc.")]
    trunk = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    return torch.optim.SGD([{"params": trunk, "lr": args.lr}, {"params": head, "lr": args.lr_last_layer}],
                           lr=args.lr, momentum=MOMENTUM, weight_decay=args.wd)


def labelled_indices(base, indices, fraction: float | None, subset: str | None, seed: int) -> list[int]:
    """The labelled images of a semi-supervised run, as indices into ``base`` (a subset of ``indices``):
    ``fraction`` of each class, at least one, drawn with ``seed``; or the images named in the ``subset`` file
    (file names, or paths ending in them)."""
    pool = list(indices)
    if hasattr(base, "samples"):  # image lists: the labels without opening an image
        targets = [int(base.samples[i][1]) for i in pool]
    elif isinstance(getattr(base, "targets", None), list):
        targets = [int(base.targets[i]) for i in pool]
    else:
        targets = [int(base[i][1]) for i in pool]
    if subset is not None:
        try:
            with open(subset, encoding="utf-8") as f:
                names = {Path(line.strip()).name for line in f if line.strip()}
        except OSError as exc:
            _fail(f"--labels-subset: cannot read {subset} ({exc.strerror or exc})")
        chosen = [i for i in pool if Path(base.image_id(i)).name in names]
        if not chosen:
            _fail(f"--labels-subset: none of the {len(names)} names in {subset} is an image of the training split")
        if len(chosen) < len(names):
            print(f"--labels-subset: {len(names) - len(chosen)} of the {len(names)} names in {subset} are not in the "
                  f"training split")
        return chosen
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in zip(pool, targets, strict=True):
        by_class.setdefault(t, []).append(i)
    chosen = []
    for t in sorted(by_class):
        members = by_class[t]
        k = max(1, round(fraction * len(members)))
        order = torch.randperm(len(members), generator=g)[:k].tolist()
        chosen.extend(members[j] for j in order)
    return sorted(chosen)


def _plain_args(args) -> dict:
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in vars(args).items()}


def _resume_args(args, ckpt: dict, given: set[str], path: str) -> None:
    """A resumed run is the checkpoint's run: what the command line leaves out comes from the checkpoint; what
    it sets to another value is refused, naming each difference. ``--epochs`` may extend the run."""
    saved = ckpt.get("args") or {}
    differ = []
    for key in RUN_ARGS:
        if key not in saved:
            continue
        if key in given:
            if getattr(args, key) != saved[key]:
                differ.append(f"{_flag(key)} {getattr(args, key)} (checkpoint: {saved[key]})")
        else:
            setattr(args, key, saved[key])
    if "lr" in saved and "lr" in given and args.lr != saved["lr"]:
        differ.append(f"--lr {args.lr} (checkpoint: {saved['lr']}; the schedule continues from the checkpoint's "
                      f"optimiser; start a new run with --weights {path} for another rate)")
    elif "lr" in saved:
        args.lr = saved["lr"]
    if differ:
        _fail(f"--resume {path}: this command line changes the run: {'; '.join(differ)}. Leave these out (they "
              f"are taken from the checkpoint) or start a new run")
    done = int(ckpt["epoch"])
    if "epochs" not in given:
        args.epochs = int(saved.get("epochs", args.epochs))
    elif args.schedule == "cosine" and args.epochs != saved.get("epochs", args.epochs):
        _fail(f"--epochs {args.epochs}: the cosine schedule of {path} spans {saved.get('epochs')} epochs; changing "
              f"it on resume is not supported")
    if not args.evaluate and done >= args.epochs and not int(ckpt.get("step", 0)):
        _fail(f"--resume {path}: the checkpoint has already trained {done} of --epochs {args.epochs}; pass a larger "
              f"--epochs to train on (step schedule), or -e to evaluate it")


def _flag(dest: str) -> str:
    return {"lambda_": "--lambda", "temperature": "-t", "batch_size": "-b", "arch": "-a"}.get(
        dest, "--" + dest.replace("_", "-"))


def main(argv: list[str] | None = None) -> dict:
    """Run ``sgc-train``; returns ``{"acc1", "acc5", "best_acc1", "epoch", "skipped_steps"}`` (evaluation:
    acc1/acc5)."""
    args = build_parser().parse_args(argv)
    given = given_args(argv if argv is not None else sys.argv[1:])
    _apply_recipe(args, given)
    _validate(args)
    world, device = setup(args.device)
    try:
        return _main(args, given, world, device)
    finally:
        teardown(world)


def _main(args, given: set[str], world: World, device: torch.device) -> dict:
    say = print if world.main else (lambda *a, **k: None)
    progress = not args.no_progress and world.main

    ckpt = load_checkpoint(args.resume) if args.resume else None
    if ckpt is not None and ckpt.get("format") != FORMAT:
        # A foreign checkpoint (e.g. the research code's): take only its weights.
        say(f"--resume {args.resume}: not an sgc-train checkpoint; loading its weights into a new run")
        args.weights, ckpt = args.resume, None
    if ckpt is not None:
        _resume_args(args, ckpt, given, args.resume)
    if args.batch_size % world.size:
        _fail(f"-b {args.batch_size}: the global batch must split evenly over {world.size} processes")
    batch_size = args.batch_size // world.size
    if world.distributed and args.negatives is None:
        args.negatives = "global"
    seed = 0 if args.seed is None else args.seed
    if args.seed is not None:
        torch.manual_seed(args.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    train_base, val_base, classes, where = _datasets(args, world)
    say(f"sgc-train: data set {where}: {len(train_base)} train / {len(val_base)} val images, {len(classes)} classes; "
        f"{args.method} on {world.size} process(es) ({device.type}), global batch {args.batch_size}")
    limit = args.limit
    train_idx = range(min(limit, len(train_base))) if limit else None
    val_idx = list(range(min(limit, len(val_base)) if limit else len(val_base)))
    val_set = CenterViewDataset(val_base, args.image_size, val_idx[world.rank:: world.size])
    pin = device.type == "cuda"
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=args.workers, pin_memory=pin)

    try:
        model = build_model(args.arch, len(classes), pretrained=args.pretrained and ckpt is None, weights=args.weights,
                            output_stride=args.output_stride, log=say, require_head=args.evaluate)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if ckpt is not None:
        if ckpt["num_classes"] != len(classes):
            _fail(f"{args.resume} has {ckpt['num_classes']} classes, the data {len(classes)}")
        model.load_state_dict(ckpt["model"])
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    amp = AMP(args.amp, device)
    if args.amp == "fp16" and device.type == "cpu":
        say("--amp fp16: on the CPU float16 convolutions are ~20x slower than float32 "
            "(benchmarks/results/train_precision.csv); --amp bf16 is the CPU's fast precision")
    n_val = len(val_idx)

    if args.evaluate:
        acc1, acc5 = evaluate(model, val_loader, device, progress, world=world, memory_format=memory_format,
                              amp=amp)
        say(f"evaluate: top-1 {acc1:.3f}  top-5 {acc5:.3f}  ({n_val} images)")
        return {"acc1": acc1, "acc5": acc5, "epoch": ckpt["epoch"] if ckpt else 0}

    save_dir, log_dir = Path(args.save_dir), Path(args.log_dir)
    if world.main:
        try:
            check_writable(save_dir, "--save_dir")
            check_writable(log_dir, "--log_dir")
        except ValueError as exc:
            _fail(str(exc))
        for name in ("last.pt", "best.pt"):  # what a kill during a checkpoint write left behind
            for tmp in stale_temps(save_dir / name):
                say(f"removing {tmp}, the remains of an interrupted checkpoint write")
                tmp.unlink()
    masks = _mask_source(args, train_base, say)
    _degenerate_guard(args, masks, say)
    train_set = MultiViewDataset(train_base, args.method, args.image_size, masks=masks, indices=train_idx, seed=seed)
    if len(train_set) < args.batch_size:
        if world.distributed:
            _fail(f"{len(train_set)} training images < global batch {args.batch_size}")
        say(f"sgc-train: {len(train_set)} training images < batch size {batch_size}; using batch size "
            f"{len(train_set)}")
        batch_size = len(train_set)
    data_generator = torch.Generator().manual_seed(seed)
    semi = args.labels_fraction is not None or args.labels_subset is not None
    unlabelled_generator = torch.Generator().manual_seed(seed + 1)
    if semi:
        pool = train_idx if train_idx is not None else range(len(train_base))
        chosen = labelled_indices(train_base, pool, args.labels_fraction, args.labels_subset, seed)
        labelled_set = MultiViewDataset(train_base, "baseline", args.image_size, indices=chosen, seed=seed)
        if len(labelled_set) < args.batch_size:
            _fail(f"semi-supervised: {len(labelled_set)} labelled images < batch size {args.batch_size}; lower -b")
        say(f"semi-supervised: {len(labelled_set)} labelled images (cross-entropy), {len(train_set)} unlabelled "
            f"(the consistency term with pseudo-labels), {len(labelled_set) // args.batch_size} steps per epoch")
        sampler = EpochSampler(len(labelled_set), data_generator, world.rank, world.size)
        labelled = DataLoader(labelled_set, batch_size=batch_size, sampler=sampler, num_workers=args.workers,
                              collate_fn=collate_views, pin_memory=pin, drop_last=True)
        unlabelled = DataLoader(train_set, batch_size=batch_size, sampler=EpochSampler(
            len(train_set), unlabelled_generator, world.rank, world.size), num_workers=args.workers,
            collate_fn=collate_views, pin_memory=pin, drop_last=True)
        train_loader = SemiSupervisedLoader(labelled, unlabelled)
    else:
        sampler = EpochSampler(len(train_set), data_generator, world.rank, world.size)
        train_loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, num_workers=args.workers,
                                  collate_fn=collate_views, pin_memory=pin,
                                  drop_last=True)  # drop_last: a batch of 1 has no negatives (spec §8 item 4)

    net = model
    if args.sync_bn and world.distributed and device.type != "cuda":
        _fail("--sync-bn: torch's SyncBatchNorm runs on CUDA devices only, this run is on the CPU")
    if args.sync_bn and not world.distributed:
        say("--sync-bn: one process; BatchNorm is already over the whole batch")
    if world.distributed:
        if args.sync_bn:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = net
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    # The classifier is already sized for the data: the optimiser sees every parameter (spec §8 item 6).
    optimizer = _optimizer(args, model)
    scheduler = _scheduler(args, optimizer)
    term_fn = consistency_term(args.method, args.image_size, args.temperature,
                               negatives=args.negatives or "local", chunk=args.negatives_per_chunk)
    start_epoch, start_step, best_acc1, acc1, acc5 = 0, 0, 0.0, 0.0, 0.0
    partial = None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_acc1 = int(ckpt["epoch"]), float(ckpt["best_acc1"])
        acc1, acc5 = float(ckpt["acc1"]), float(ckpt["acc5"])
        set_rng_state(ckpt["rng"], data_generator)
        if "unlabelled_rng" in ckpt:
            unlabelled_generator.set_state(ckpt["unlabelled_rng"])
        if "scaler" in ckpt and amp.scaler is not None:
            amp.scaler.load_state_dict(ckpt["scaler"])
        start_step = int(ckpt.get("step", 0))
        if start_step:
            if int(ckpt.get("world_size", 1)) != world.size:
                _fail(f"--resume {args.resume}: taken inside an epoch by {ckpt.get('world_size', 1)} process(es), "
                      f"this run has {world.size}; resume it with as many, or from an epoch-end checkpoint")
            sampler.resume_at(ckpt["epoch_rng"], start_step * batch_size)
            partial = {"sums": ckpt["epoch_sums"], "n": int(ckpt["epoch_n"]), "skipped": int(ckpt.get("epoch_skipped", 0))}
        say(f"resumed {args.resume} at epoch {start_epoch}{f' step {start_step}' if start_step else ''} "
            f"(best top-1 {best_acc1:.3f}); training to epoch {args.epochs}")

    def state(epoch_done: int, step: int = 0, **extra) -> dict:
        return {
            "format": FORMAT, "arch": args.arch, "num_classes": len(classes), "classes": classes,
            "output_stride": args.output_stride, "method": args.method, "epoch": epoch_done, "step": step,
            "world_size": world.size, "model": export_state_dict(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "acc1": acc1, "acc5": acc5, "best_acc1": best_acc1,
            "rng": rng_state(data_generator), "args": _plain_args(args),
            **({"unlabelled_rng": unlabelled_generator.get_state()} if semi else {}),
            **({"scaler": amp.scaler.state_dict()} if amp.scaler is not None else {}), **extra,
        }

    def mid_epoch_checkpoint(epoch: int, step: int, sums: torch.Tensor, n: int, skipped: int) -> None:
        broadcast_buffers(model, world)
        if world.main:
            save_checkpoint(save_dir / "last.pt", state(epoch, step, epoch_rng=sampler.epoch_state,
                                                        epoch_sums=sums.clone(), epoch_n=n, epoch_skipped=skipped))

    log = JsonlLog(log_dir / "train.jsonl" if world.main else None)
    board = TensorBoard(log_dir if world.main else None)
    log.write(kind="start", start_epoch=start_epoch, start_step=start_step, args=_plain_args(args),
              device=str(device), world_size=world.size, data=where, train_images=len(train_set),
              val_images=n_val, classes=len(classes), tensorboard=board.enabled)
    skipped_total = 0
    try:
        for epoch in range(start_epoch, args.epochs):
            train_set.set_epoch(epoch)
            stats = train_one_epoch(
                net, train_loader, optimizer, method=args.method, term_fn=term_fn, lambda_=args.lambda_,
                device=device, epoch=epoch, log=log, print_freq=args.print_freq, progress=progress, world=world,
                amp=amp, memory_format=memory_format, max_bad_steps=args.max_bad_steps,
                checkpoint_every=args.checkpoint_every, on_checkpoint=mid_epoch_checkpoint,
                start_step=start_step if epoch == start_epoch else 0,
                partial=partial if epoch == start_epoch else None, board=board, single_forward=args.single_forward)
            skipped_total += stats.pop("skipped_steps")
            replaced = stats.pop("replaced_images")
            if replaced:
                say(f"epoch {epoch}: {replaced} undecodable image(s) replaced by the next ones in their batches "
                    f"(--image-check full finds them before training)")
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            broadcast_buffers(model, world)
            acc1, acc5 = evaluate(model, val_loader, device, progress, world=world, memory_format=memory_format,
                                  amp=amp)
            is_best = acc1 > best_acc1 or epoch == start_epoch and best_acc1 == 0.0
            best_acc1 = max(best_acc1, acc1)
            log.write(kind="val", epoch=epoch, acc1=acc1, acc5=acc5, best_acc1=best_acc1, lr=lr,
                      train_loss=stats["loss"], train_term=stats["term"], replaced_images=replaced)
            board.scalars("val", epoch, acc1=acc1, acc5=acc5, train_loss=stats["loss"], train_term=stats["term"],
                          lr=lr)
            say(f"epoch {epoch}: loss {stats['loss']:.4f} (term {stats['term']:.4f})  val top-1 {acc1:.3f} "
                f"top-5 {acc5:.3f}  best {best_acc1:.3f}")
            if world.main:
                checkpoint = state(epoch + 1)
                # best.pt before last.pt: a kill between the two repeats this epoch on resume (last.pt is the old
                # one) and writes best.pt again; the other order would record the new best in last.pt and never
                # write best.pt.
                if is_best:
                    save_checkpoint(save_dir / "best.pt", checkpoint)
                save_checkpoint(save_dir / "last.pt", checkpoint)
    finally:
        log.close()
        board.close()
    return {"acc1": acc1, "acc5": acc5, "best_acc1": best_acc1, "epoch": args.epochs, "skipped_steps": skipped_total}


def run(argv: list[str] | None = None) -> int:
    """Console-script entry point (``sgc-train``): exit status 0 on success, one line and status 2 for a user
    error (the traceback with ``--debug``). (``main`` returns its results dict, which ``sys.exit`` would treat as
    a failure.)"""
    from ..console import run_cli

    return run_cli(main, "sgc-train", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
