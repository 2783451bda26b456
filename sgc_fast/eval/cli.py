"""``sgc-eval``: accuracy and explanation metrics of ``sgc-train`` checkpoints (upstream spec §7).

For every image: the model (eval mode) sees the image (``--view full``: the whole image, shorter side
resized to ``--eval-size``, default = no resize, no crop, as the research scripts; ``--view center``:
``sgc-train``'s validation view, so top-1/top-5 match ``sgc-train -e``). The CAM of the
**ground-truth** class (``relu(sum_k dlogit/dA_k * A_k)`` at layer4; equal to Grad-CAM for a GAP +
linear head) is upsampled bilinearly to the metric frame (the original image for ``full``, the view
for ``center``) and scored with :mod:`sgc_fast.metrics`:

- top-1 / top-5 accuracy (%);
- content heatmap: ``nanmean`` of the in-box share of the CAM x 100 (zero-mass CAMs skipped);
- pointing game (%): argmax within 15 px of a box pixel;
- stochastic pointing game (%): 100 samples per image, seeded generator (``--spg-seed``); with VOC
  annotations, images whose target-class boxes are all ``difficult`` are skipped (as upstream);
- insertion / deletion AUC (RISE; blur / zero substrate) at the model input resolution, on the first
  ``--causal-limit`` images (``--no-causal`` skips them). Tracked class = the prediction.

Research bugs not reproduced (spec §7): no ``train()``-mode CAMs or BatchNorm updates, deterministic
tie order, seeded sampling, zero-mass maps skipped rather than mixed in. Examples::

    sgc-eval --checkpoint checkpoint/best.pt --image-size 64 --out results.json --grid grid.png
    sgc-eval --checkpoint sgc/best.pt base/best.pt --names sgc baseline --limit 200 --causal-limit 50
    sgc-eval /data/synth --dataset folder --split test --checkpoint best.pt          # boxes.json
    sgc-eval /data/cub --dataset folder --split val --annotations /data/cub/annotation --eval-size 448 \\
        --checkpoint best.pt
    sgc-eval /data/CUB_200_2011 --dataset cub --checkpoint best.pt             # boxes from bounding_boxes.txt
    sgc-eval /data/imagenet --dataset imagenet --checkpoint best.pt --causal-all   # flat val/ + annotation/*.xml
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..files import atomic_write_text, check_writable
from ..metrics import (
    content_heatmap,
    deletion_auc,
    insertion_auc,
    pointing_game,
    read_voc_boxes,
    stochastic_pointing_game,
)
from ..ops import batched_cam
from ..train.checkpoint import FORMAT, load_checkpoint
from ..train.dist import default_device
from ..train.models import ARCHS, OUTPUT_STRIDES, build_model, cam_grads, forward_feats

__all__ = ["METRICS", "build_parser", "main", "run"]

METRICS = ("acc1", "acc5", "content_heatmap", "pointing_game", "stochastic_pointing_game", "insertion_auc",
           "deletion_auc")
_HEAD = {"acc1": "top-1", "acc5": "top-5", "content_heatmap": "CH", "pointing_game": "PG",
         "stochastic_pointing_game": "SPG", "insertion_auc": "ins", "deletion_auc": "del"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sgc-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", nargs="?", default=None, help="dataset root with <split>/<class>/<image> (not for synthetic)")
    p.add_argument("--checkpoint", nargs="+", required=True, help="one or more sgc-train checkpoints (best.pt / last.pt)")
    p.add_argument("--names", nargs="+", default=None, help="a name per checkpoint (default: the file paths)")
    p.add_argument("-a", "--arch", default=None, choices=ARCHS,
                   help="architecture of a foreign (non sgc-train) checkpoint; sgc-train checkpoints record theirs")
    p.add_argument("--output-stride", type=int, default=32, choices=OUTPUT_STRIDES,
                   help="of a foreign checkpoint; sgc-train checkpoints record theirs")
    p.add_argument("--dataset", default="synthetic",
                   choices=("synthetic", "folder", "cub", "aircraft", "fgvc", "cars", "flowers", "imagenet"),
                   help="cub, aircraft, cars, imagenet: the native layout (sgc_fast.data.layouts) and its boxes")
    p.add_argument("--class-list", default=None, help="imagenet: wnids, one per line (default: the shipped ImageNet-100)")
    p.add_argument("--split", default=None, help="split to evaluate (default: test for synthetic, val for folder)")
    p.add_argument("--annotations", default=None,
                   help="folder only: directory of Pascal-VOC XMLs (<image id>.xml, or flat <stem>.xml); default: "
                        "<data>/<split>/boxes.json as SyntheticShapes.write_imagefolder writes it")
    p.add_argument("--image-size", type=int, default=None,
                   help="synthetic image size (default: the checkpoint's training --image-size)")
    p.add_argument("--seed", type=int, default=None, help="synthetic data-set seed (default: the checkpoint's, or 0)")
    p.add_argument("--bias", type=float, default=0.0, help="synthetic only; ignored for the test split")
    p.add_argument("--view", default="full", choices=("full", "center"),
                   help="full: whole image resized to --eval-size; center: sgc-train's validation view")
    p.add_argument("--eval-size", type=int, default=None,
                   help="full: shorter side fed to the model (default: no resize; for the native layouts the research "
                        "scripts' 224 for SGC, 448 for CGC checkpoints); center: S (default: --image-size)")
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("-j", "--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--tolerance", type=float, default=15, help="pointing-game tolerance (pixels, strict)")
    p.add_argument("--samples", type=int, default=100, help="stochastic pointing game: samples per image")
    p.add_argument("--spg-seed", type=int, default=0, help="stochastic pointing game generator seed")
    p.add_argument("--no-causal", action="store_true", help="skip insertion / deletion AUC")
    p.add_argument("--causal-limit", type=int, default=500, help="insertion / deletion on the first N images only")
    p.add_argument("--causal-all", action="store_true", help="insertion / deletion on every image of the split")
    p.add_argument("--causal-steps", type=int, default=None, help="insertion / deletion steps (default 28)")
    p.add_argument("--out", default="results.json", help="JSON results ('' to skip)")
    p.add_argument("--grid", default=None, help="write a heatmap grid PNG here")
    p.add_argument("--grid-n", type=int, default=8,
                   help="images in the grid: half where the first two models' CAMs differ most, half random")
    p.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    p.add_argument("--no-progress", action="store_true")
    return p


# ------------------------------------------------------------------------------------------- data


class _Boxed(Dataset):
    """``base[i] -> (PIL, class)`` plus boxes -> dict(x, raw, target, boxes, index) in the metric frame."""

    def __init__(self, base, boxes_fn, view: str, eval_size: int | None, indices) -> None:
        self.base, self.boxes_fn, self.view, self.eval_size = base, boxes_fn, view, eval_size
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        from ..data.views import center_size, to_normalized

        idx = self.indices[i]
        img, target = self.base[idx]
        img = img.convert("RGB") if img.mode != "RGB" else img
        boxes = self.boxes_fn(idx)
        spg_skip = False
        if isinstance(boxes, tuple):  # (boxes, skip the stochastic pointing game)
            boxes, spg_skip = boxes
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if self.view == "center":  # sgc-train's validation view; boxes follow the resize + crop
            S = self.eval_size
            w0, h0 = img.size
            img = TF.resize(img, center_size(S), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
            w1, h1 = img.size
            top, left = int(round((h1 - S) / 2.0)), int(round((w1 - S) / 2.0))
            img = TF.center_crop(img, [S, S])
            boxes = boxes * torch.tensor([w1 / w0, h1 / h0] * 2) - torch.tensor([left, top] * 2, dtype=torch.float32)
            raw = TF.to_tensor(img)
            x = to_normalized(raw)
        else:
            raw = TF.to_tensor(img)
            fed = img if self.eval_size is None else TF.resize(
                img, self.eval_size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
            x = to_normalized(TF.to_tensor(fed))
        return {"x": x, "raw": raw, "target": int(target), "boxes": boxes, "index": idx, "spg_skip": spg_skip}


def _json_boxes(split_dir: Path, base):
    path = split_dir / "boxes.json"
    if not path.is_file():
        raise SystemExit(f"sgc-eval: {path} not found; pass --annotations DIR (Pascal-VOC XMLs)")
    table = json.loads(path.read_text())

    def boxes(i):
        key = base.image_id(i)
        if key not in table:
            raise KeyError(f"{path}: no boxes for {key}")
        return table[key]

    return boxes


def _voc_boxes(ann: Path, base):
    def boxes(i):
        rel = Path(base.image_id(i))
        for cand in (ann / rel.with_suffix(".xml"), ann / (rel.stem + ".xml")):
            if cand.is_file():
                break
        else:
            raise FileNotFoundError(f"sgc-eval: no annotation for {rel} under {ann}")
        b, names, _ = read_voc_boxes(cand)
        cls = base.classes[base.samples[i][1]]
        if cls not in names and names:  # object names differ from the folder names: the research rule (first object)
            cls = names[0]
        keep = [k for k, n in enumerate(names) if n == cls]
        # The stochastic pointing game skips an image whose target boxes are all <difficult>1 (spec §7.2).
        spg_skip = bool(keep) and len(read_voc_boxes(cand, cls, skip_difficult=True)[0]) == 0
        return b[keep], spg_skip

    return boxes


NATIVE = ("cub", "aircraft", "fgvc", "cars", "flowers", "imagenet")
#: --eval-size of --view full on the native layouts: the research evaluation scripts' input_resize (upstream.md §7:
#: 224 in the SGC README, 448 in CGC's tables).
EVAL_SIZE = {"cgc": 448}
DEFAULT_EVAL_SIZE = 224


def _native(args, ckpt_meta: dict):
    from ..data.layouts import open_split

    split = args.split or "test"
    try:
        base = open_split(args.dataset, args.data, split, class_list=args.class_list, annotations=args.annotations)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise SystemExit(f"sgc-eval: {exc}") from None
    if ckpt_meta["classes"] is not None and list(base.classes) != list(ckpt_meta["classes"]):
        raise SystemExit(f"sgc-eval: the checkpoint was trained on {len(ckpt_meta['classes'])} classes "
                         f"({ckpt_meta['classes'][:2]}...), {args.dataset} {split} has {len(base.classes)} "
                         f"({list(base.classes)[:2]}...)")
    if getattr(base, "has_boxes", False):
        boxes = base.boxes
    elif args.annotations:
        boxes = _voc_boxes(Path(args.annotations), base)
    else:
        raise SystemExit(f"sgc-eval: {args.dataset} {split} has no boxes (content heatmap and pointing game need "
                         f"them); pass --annotations DIR with Pascal-VOC XMLs")
    return base, boxes, list(base.classes), {"split": split, "root": str(args.data)}


def _dataset(args, ckpt_meta: dict):
    """(base, boxes_fn, classes, info)."""
    if args.dataset in NATIVE:
        if args.data is None:
            raise SystemExit(f"sgc-eval: --dataset {args.dataset} needs the data directory (positional argument)")
        return _native(args, ckpt_meta)
    if args.dataset == "synthetic":
        from ..data.synthetic import DEFAULT_CLASSES, SyntheticShapes

        split = args.split or "test"
        size = max(args.image_size, 32)
        base = SyntheticShapes(split=split, size=size, num_classes=len(ckpt_meta["classes"] or []) or DEFAULT_CLASSES,
                               bias=args.bias if split != "test" else 0.0, seed=args.seed)
        return base, base.boxes, list(base.classes), {"split": split, "size": size, "seed": args.seed}
    from ..data.folder import ImageFolder

    if args.data is None:
        raise SystemExit("sgc-eval: --dataset folder needs the data directory (positional argument)")
    split = args.split or "val"
    base = ImageFolder(args.data, split, classes=ckpt_meta["classes"] or None)
    boxes = _voc_boxes(Path(args.annotations), base) if args.annotations else _json_boxes(base.root, base)
    return base, boxes, list(base.classes), {"split": split, "root": str(args.data)}


def _collate(items: list[dict]) -> list[dict]:
    return items


def shape_order(base, indices, eval_size: int | None) -> list[int]:
    """``indices`` reordered so that images fed at the same shape are consecutive (``--view full`` resizes the
    shorter side to ``eval_size`` and keeps the aspect ratio): batches of one shape instead of runs of one image.
    The sizes come from the image headers; data sets without image files keep their order."""
    indices = list(indices)
    if not hasattr(base, "samples"):
        return indices
    from PIL import Image

    def fed(i):
        with Image.open(base.samples[i][0]) as img:
            w, h = img.size
        if eval_size is None:
            return h, w
        if h <= w:
            return eval_size, int(eval_size * w / h)
        return int(eval_size * h / w), eval_size

    shapes = {i: fed(i) for i in indices}
    return sorted(indices, key=lambda i: (shapes[i], i))


def _runs(items: list[dict]):
    """Consecutive items whose inputs and metric frames have the same shapes (stackable)."""
    run: list[dict] = []
    for it in items:
        if run and (it["x"].shape != run[0]["x"].shape or it["raw"].shape != run[0]["raw"].shape):
            yield run
            run = []
        run.append(it)
    if run:
        yield run


# ------------------------------------------------------------------------------------------ model


def _meta(path: str, args) -> dict:
    ckpt = load_checkpoint(path)
    if ckpt.get("format") == FORMAT:
        return {"ckpt": ckpt, "arch": ckpt["arch"], "classes": list(ckpt["classes"]), "epoch": ckpt.get("epoch"),
                "method": ckpt.get("method"), "args": ckpt.get("args") or {},
                "output_stride": int(ckpt.get("output_stride", 32))}
    if args.arch is None:
        raise SystemExit(f"sgc-eval: {path} is not an sgc-train checkpoint; pass -a/--arch")
    return {"ckpt": None, "arch": args.arch, "classes": None, "epoch": None, "method": None, "args": {},
            "output_stride": args.output_stride}


def _model(path: str, meta: dict, num_classes: int, device) -> torch.nn.Module:
    if meta["ckpt"] is None:
        try:
            model = build_model(meta["arch"], num_classes, weights=path, output_stride=meta["output_stride"],
                                require_head=True)
        except ValueError as exc:
            raise SystemExit(f"sgc-eval: {exc}") from None
    else:
        if meta["ckpt"]["num_classes"] != num_classes:
            raise SystemExit(f"sgc-eval: {path} has {meta['ckpt']['num_classes']} classes, the data {num_classes}")
        model = build_model(meta["arch"], num_classes, output_stride=meta["output_stride"])
        model.load_state_dict(meta["ckpt"]["model"])
    return model.to(device).eval()


def cams(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [B, C], cam [B, h, w])``: the layer4 CAM of class ``targets`` (eval mode, no BN update)."""
    with torch.enable_grad():
        logits, feats = forward_feats(model, x)
        grads = cam_grads(model, logits, feats, targets)
        cam = batched_cam(feats.detach(), grads.detach(), kind="hires")
    return logits.detach(), cam.detach()


def _upsample(cam: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(cam[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0].clamp_min(0)


def _evaluate_one(model, loader, device, args, n_images: int, desc: str, grid_store: list | None) -> dict:
    gen = torch.Generator(device=device).manual_seed(args.spg_seed)
    sums = {k: 0.0 for k in METRICS}
    counts = {k: 0 for k in METRICS}
    seen = 0
    causal_left = 0 if args.no_causal else max(args.causal_limit, 0)
    bar = tqdm(total=n_images, desc=desc, disable=args.no_progress, dynamic_ncols=True, leave=False)
    for items in loader:
        for run in _runs(items):
            x = torch.stack([it["x"] for it in run]).to(device)
            y = torch.tensor([it["target"] for it in run], device=device)
            boxes = [it["boxes"] for it in run]
            logits, cam = cams(model, x, y)
            k = min(5, logits.shape[1])
            hit = logits.topk(k, dim=1).indices == y[:, None]
            maps = _upsample(cam, run[0]["raw"].shape[-2:])
            scores = {
                "acc1": hit[:, 0].double() * 100, "acc5": hit.any(1).double() * 100,
                "content_heatmap": content_heatmap(maps, boxes).double() * 100,
                "pointing_game": pointing_game(maps, boxes, args.tolerance).double() * 100,
                "stochastic_pointing_game": stochastic_pointing_game(
                    maps, boxes, args.samples, args.tolerance, generator=gen).double() * 100,
            }
            skip = torch.tensor([it["spg_skip"] for it in run], device=device)
            if bool(skip.any()):
                spg = scores["stochastic_pointing_game"]
                scores["stochastic_pointing_game"] = torch.where(skip, torch.full_like(spg, torch.nan), spg)
            if causal_left > 0:
                m = min(causal_left, len(run))
                in_maps = _upsample(cam[:m], x.shape[-2:])
                with torch.no_grad():
                    scores["insertion_auc"] = insertion_auc(model, x[:m], in_maps, steps=args.causal_steps).double()
                    scores["deletion_auc"] = deletion_auc(model, x[:m], in_maps, steps=args.causal_steps).double()
                causal_left -= m
            for key, v in scores.items():
                ok = ~torch.isnan(v)
                sums[key] += float(v[ok].sum())
                counts[key] += int(ok.sum())
            if grid_store is not None:  # per-image scores: the grid picks its rows from them
                pred = logits.argmax(1)
                for j in range(len(run)):
                    grid_store.append({"pos": seen + j, "ch": float(scores["content_heatmap"][j]),
                                       "pg": float(scores["pointing_game"][j]), "pred": int(pred[j])})
            seen += len(run)
            bar.update(len(run))
    bar.close()
    out = {k: (sums[k] / counts[k] if counts[k] else None) for k in METRICS}
    out.update(images=seen, ch_images=counts["content_heatmap"], spg_images=counts["stochastic_pointing_game"],
               causal_images=counts["insertion_auc"])
    return out


# ------------------------------------------------------------------------------------------ output


def _fmt(key: str, v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if key in ("insertion_auc", "deletion_auc") else f"{v:.2f}"


def format_table(rows: list[dict]) -> str:
    heads = ["model", "images", *(_HEAD[k] for k in METRICS)]
    body = [[r["name"], str(r["images"]), *(_fmt(k, r[k]) for k in METRICS)] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(heads)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(heads), line(["-" * w for w in widths]), *(line(b) for b in body)])


def main(argv: list[str] | None = None) -> dict:
    """Run ``sgc-eval``; returns ``{"config": {...}, "results": [one dict per checkpoint]}`` (also the JSON)."""
    args = build_parser().parse_args(argv)
    if args.names is not None and len(args.names) != len(args.checkpoint):
        raise SystemExit(f"sgc-eval: --names needs one name per checkpoint ({len(args.checkpoint)}), got {len(args.names)}")
    names = args.names or list(args.checkpoint)
    try:  # outputs proven writable before any evaluation
        if args.out:
            check_writable(args.out, "--out", folder=False)
        if args.grid:
            check_writable(args.grid, "--grid", folder=False)
    except ValueError as exc:
        raise SystemExit(f"sgc-eval: {exc}") from None
    if args.image_size is not None and args.image_size < 32:
        raise SystemExit(f"sgc-eval: --image-size: expected >= 32, got {args.image_size}")
    for flag, value, ok, want in (
        ("-b", args.batch_size, args.batch_size >= 1, ">= 1"),
        ("-j", args.workers, args.workers >= 0, ">= 0"),
        ("--limit", args.limit, args.limit is None or args.limit >= 1, ">= 1 (leave it out for every image)"),
        ("--eval-size", args.eval_size, args.eval_size is None or args.eval_size >= 32, ">= 32"),
        ("--samples", args.samples, args.samples >= 1, ">= 1"),
        ("--causal-limit", args.causal_limit, args.causal_limit >= 0, ">= 0"),
        ("--causal-steps", args.causal_steps, args.causal_steps is None or args.causal_steps >= 1, ">= 1"),
        ("--tolerance", args.tolerance, args.tolerance == args.tolerance and args.tolerance >= 0, "a number >= 0"),
        ("--grid-n", args.grid_n, args.grid_n >= 1, ">= 1"),
    ):
        if not ok:
            raise SystemExit(f"sgc-eval: {flag}: expected {want}, got {value}")
    device = default_device(args.device)
    metas = [_meta(p, args) for p in args.checkpoint]
    first = metas[0]
    if args.image_size is None:
        args.image_size = int(first["args"].get("image_size") or 224)
    if args.seed is None:
        args.seed = int(first["args"].get("seed") or 0)
    base, boxes_fn, classes, info = _dataset(args, first)
    for p, m in zip(args.checkpoint, metas, strict=True):
        if m["classes"] is not None and m["classes"] != classes:
            raise SystemExit(f"sgc-eval: {p} was trained on classes {m['classes']}, the data has {classes}")
    if args.view == "center" and args.eval_size is None:
        args.eval_size = args.image_size
    if args.view == "full" and args.eval_size is None and args.dataset in NATIVE:
        args.eval_size = EVAL_SIZE.get(first["method"], DEFAULT_EVAL_SIZE)
    if args.causal_all:
        args.causal_limit = len(base)
    n = len(base) if args.limit is None else min(args.limit, len(base))
    order = shape_order(base, range(n), args.eval_size) if args.view == "full" else range(n)
    data = _Boxed(base, boxes_fn, args.view, args.eval_size, order)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        collate_fn=_collate)
    results, per_image = [], []
    for path, name, meta in zip(args.checkpoint, names, metas, strict=True):
        model = _model(path, meta, len(classes), device)
        store = [] if args.grid else None
        t0 = time.perf_counter()
        row = _evaluate_one(model, loader, device, args, n, name, store)
        row.update(name=name, checkpoint=str(path), arch=meta["arch"], epoch=meta["epoch"], method=meta["method"],
                   seconds=round(time.perf_counter() - t0, 3))
        results.append(row)
        per_image.append(store)
        del model
    print(format_table(results))
    config = {"dataset": args.dataset, **info, "view": args.view, "eval_size": args.eval_size,
              "image_size": args.image_size, "limit": args.limit, "classes": classes, "tolerance": args.tolerance,
              "samples": args.samples, "spg_seed": args.spg_seed, "causal": not args.no_causal,
              "causal_limit": args.causal_limit, "causal_steps": args.causal_steps, "device": str(device)}
    out = {"config": config, "results": results}
    if args.out:
        atomic_write_text(args.out, json.dumps(out, indent=2))
        print(f"wrote {args.out}")
    if args.grid and n:
        _write_grid(args, data, per_image, names, metas, classes, device)
    return out


def pick_grid_rows(per_image: list[list[dict]], n: int, seed: int) -> list[tuple[int, str]]:
    """``[(position, why)]``: the ``n // 2`` images on which the first two models' CAMs differ most (content
    heatmap difference + pointing-game disagreement; ``why`` = "differ"), then random others (``"random"``,
    drawn with ``seed``). One model: random images only."""
    count = len(per_image[0])
    n = min(n, count)
    chosen: list[tuple[int, str]] = []
    if len(per_image) >= 2 and n >= 2:
        a, b = per_image[0], per_image[1]

        def gap(k: int) -> float:
            ch = abs(_zero_if_nan(a[k]["ch"]) - _zero_if_nan(b[k]["ch"]))
            return ch + abs(a[k]["pg"] - b[k]["pg"])

        order = sorted(range(count), key=lambda k: (-gap(k), k))
        chosen = [(a[k]["pos"], "differ") for k in order[: n // 2]]
    taken = {pos for pos, _ in chosen}
    rest = [r["pos"] for r in per_image[0] if r["pos"] not in taken]
    g = torch.Generator().manual_seed(seed)
    for k in torch.randperm(len(rest), generator=g)[: n - len(chosen)].tolist():
        chosen.append((rest[k], "random"))
    return chosen


def _zero_if_nan(v: float) -> float:  # a CAM without mass has no content-heatmap score
    return 0.0 if math.isnan(v) else v


def _write_grid(args, data, per_image, names, metas, classes, device) -> None:
    """The heatmap grid: rows picked by :func:`pick_grid_rows`, each CAM captioned with its CH / PG and the
    model's prediction (a second, small pass over those images only)."""
    from ..viz import save_grid

    rows = pick_grid_rows(per_image, args.grid_n, args.seed or 0)
    items = [data[pos] for pos, _ in rows]
    by_pos = [{r["pos"]: r for r in store} for store in per_image]
    cams_per_model, captions = [], []
    for path, meta, scores in zip(args.checkpoint, metas, by_pos, strict=True):
        model = _model(path, meta, len(classes), device)
        maps = []
        for it in items:
            _, cam = cams(model, it["x"][None].to(device), torch.tensor([it["target"]], device=device))
            maps.append(_upsample(cam, it["raw"].shape[-2:])[0].cpu())
        cams_per_model.append(maps)
        captions.append([_caption(scores[pos], classes) for pos, _ in rows])
        del model
    labels = [f"{why}: {classes[it['target']]}" for (_, why), it in zip(rows, items, strict=True)]
    save_grid(args.grid, [it["raw"] for it in items], cams_per_model, names, captions=captions, row_labels=labels)
    print(f"wrote {args.grid} ({sum(w == 'differ' for _, w in rows)} images where the first two models differ "
          f"most, {sum(w == 'random' for _, w in rows)} random)")


def _caption(score: dict, classes: list[str]) -> str:
    ch = "CH -" if math.isnan(score["ch"]) else f"CH {score['ch']:.0f}"
    return f"{ch}, PG {'hit' if score['pg'] > 0 else 'miss'}\n-> {classes[score['pred']]}"


def run(argv: list[str] | None = None) -> int:
    """Console-script entry point (``sgc-eval``): exit status 0 on success, one line and status 2 for a user
    error (the traceback with ``--debug``). (``main`` returns its results dict, which ``sys.exit`` would treat as
    a failure.)"""
    from ..console import run_cli

    return run_cli(main, "sgc-eval", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())

