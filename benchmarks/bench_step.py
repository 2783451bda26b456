"""Images/s and peak memory of whole SGC / CGC training steps: the research pipeline against this library's.

    .venv/bin/python benchmarks/bench_step.py                       # CPU preset: ResNet-18, 224 px, batch 8
    .venv/bin/python benchmarks/bench_step.py --method cgc
    .venv/bin/python benchmarks/bench_step.py --preset gpu --device cuda   # ResNet-50 b64 / ResNet-18 b192

Rows (each in its own process, so that the peak memory is the row's own; the first ``--warmup`` steps are not
timed; a step is timed from fetching its batch to the end of ``optimizer.step()``, so the data path counts):

* ``research``: :mod:`research_step` -- the research data path (SGC: full U²-Net per sample in ``__getitem__``,
  without ``no_grad``) and step (three forwards, ``autograd.grad(create_graph=True)`` CAMs, full-size maps, NumPy
  argmax, CGC's per-sample warp loop);
* ``research+cache``: the research step on masks read from the mask cache (separates the data path from the step);
* ``library:reference`` / ``library:<fused backend>``: ``sgc-train``'s own epoch loop (``train_one_epoch``:
  closed-form CAM gradients, the reference or the fused contrast) on ``MultiViewDataset`` with the mask cache;
* ``library:<fused>+loader``: the same with U²-Net run per sample in the loader (under ``no_grad``).

U²-Net has random weights (the official file is not shipped): the masks differ from real ones, the cost does not.
The cache build is timed once (``precompute_s``) and is not part of the step. ``--precision`` repeats every row
under autocast. Rows are appended to ``benchmarks/results/step.csv``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import research_step  # noqa: E402
from bench_common import append_rows, device_name, peak_rss_mb, report, run_child, u2net_weights, without_options  # noqa: E402

from sgc_fast.data.synthetic import SyntheticShapes  # noqa: E402
from sgc_fast.data.views import MultiViewDataset, ProviderMasks, collate_views  # noqa: E402
from sgc_fast.loss import CGCLoss, SGCLoss  # noqa: E402
from sgc_fast.train.loop import AMP, JsonlLog, train_one_epoch  # noqa: E402

CSV = ROOT / "benchmarks" / "results" / "step.csv"
COLUMNS = ("date", "device", "torch", "arch", "method", "image_size", "batch", "steps", "precision", "pipeline",
           "u2net", "step_s", "images_per_s", "peak_mb", "memory", "precompute_s", "speedup_vs_research",
           "speedup_vs_research_fp32")
PRESETS = {
    "cpu": [{"arch": "resnet18", "batch": 8, "image_size": 224}],
    "gpu": [{"arch": "resnet50", "batch": 64, "image_size": 224}, {"arch": "resnet18", "batch": 192, "image_size": 224}],
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _base(cfg, steps: int):
    return SyntheticShapes("train", size=cfg["image_size"], length=cfg["batch"] * steps)


def _model(cfg, device):
    torch.manual_seed(0)
    model = torchvision.models.__dict__[cfg["arch"]](num_classes=5).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)


def build_cache(cfg, args, folder: Path, device) -> tuple[Path, float]:
    from sgc_fast.saliency import key_extra
    from sgc_fast.saliency.cache import MaskCache
    from sgc_fast.saliency.providers import U2NetProvider
    from sgc_fast.saliency.transforms import center_view_transform

    base = _base(cfg, args.warmup + args.steps)
    provider = U2NetProvider(u2net_weights(folder, args.u2net == "small"), small=args.u2net == "small",
                             device=str(device))
    center = center_view_transform(cfg["image_size"])
    path = folder / f"{cfg['arch']}-{cfg['image_size']}-{cfg['batch']}.sgcmask"
    t0 = time.perf_counter()
    MaskCache.build(path, [base.image_id(i) for i in range(len(base))], provider,
                    lambda idx: torch.stack([center(base[i][0]) for i in idx]), key_extra=key_extra(base, cfg["image_size"]),
                    batch_size=32, progress=False)
    return path, time.perf_counter() - t0


def measure(args, cfg, pipeline: str, precision: str, device, folder: Path) -> dict:
    """(child process) the steps of one row; returns seconds per step and the peak memory."""
    from sgc_fast.saliency.cache import MaskCache
    from sgc_fast.saliency.providers import U2NetProvider
    from sgc_fast.saliency.u2net import U2Net

    torch.manual_seed(0)
    n = args.warmup + args.steps
    base = _base(cfg, n)
    S, B = cfg["image_size"], cfg["batch"]
    model, opt = _model(cfg, device)
    amp_dtype = DTYPES[precision]
    times: list[float] = []
    cache_path = folder / f"{cfg['arch']}-{S}-{B}.sgcmask"
    if pipeline.startswith("research"):
        if args.method == "sgc" and pipeline == "research":
            net = U2Net(small=args.u2net == "small")
            net.load_state_dict(torch.load(u2net_weights(folder, args.u2net == "small"), weights_only=True))
            data = research_step.ResearchSGCData(base, net, S)
            collate = None
        else:  # the research step on the library's views (mask cache for SGC; CGC's crops and flips)
            masks = MaskCache.open(cache_path, None) if args.method == "sgc" else None
            views = MultiViewDataset(base, args.method, S, masks=masks)
            data, collate = views, collate_views
        loader = DataLoader(data, batch_size=B, num_workers=args.workers, collate_fn=collate)
        it = iter(loader)
        for k in range(n):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            batch = next(it)
            if isinstance(batch, dict):
                if args.method == "sgc":
                    batch = (batch["xe"], batch["orig"], batch["aug"], batch["mask"], batch["target"])
                else:
                    batch = (batch["xe"], batch["orig"], batch["aug"], batch["crop"], batch["flip"], batch["target"])
            research_step.research_step(model, opt, batch, device, method=args.method, amp=amp_dtype)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if k >= args.warmup:
                times.append(time.perf_counter() - t0)
    else:
        backend = pipeline.split(":")[1].split("+")[0]
        if args.method == "sgc":
            if pipeline.endswith("+loader"):
                provider = U2NetProvider(u2net_weights(folder, args.u2net == "small"), small=args.u2net == "small",
                                         device="cpu")
                masks = ProviderMasks(provider)
            else:
                masks = MaskCache.open(cache_path, None)
            term = SGCLoss(backend=backend)
        else:
            masks, term = None, CGCLoss(size=(S, S), backend=backend)
        views = MultiViewDataset(base, args.method, S, masks=masks)
        amp = AMP({"fp32": "none"}.get(precision, precision), device)
        for k in range(n):  # one epoch of one batch per timed step: the loop sgc-train runs
            subset = torch.utils.data.Subset(views, range(k * B, (k + 1) * B))
            loader = DataLoader(subset, batch_size=B, num_workers=args.workers, collate_fn=collate_views)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            train_one_epoch(model, loader, opt, method=args.method, term_fn=term, lambda_=0.5, device=device, epoch=0,
                            log=JsonlLog(None), progress=False, amp=amp)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if k >= args.warmup:
                times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak, memory = torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    else:
        peak, memory = peak_rss_mb(), "process peak RSS"
    return {"step_s": statistics.median(times), "peak_mb": peak, "memory": memory}


def pipelines(method: str, device) -> list[str]:
    import sgc_fast

    fused = [b for b in sgc_fast.available_backends(device) if b != "reference"][:1]
    rows = ["research"]
    if method == "sgc":
        rows.append("research+cache")
    rows += ["library:reference"] + [f"library:{b}" for b in fused]
    if method == "sgc":
        rows += [f"library:{b}+loader" for b in fused]
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu", choices=tuple(PRESETS))
    p.add_argument("--method", default="sgc", choices=("sgc", "cgc"))
    p.add_argument("--arch", default=None, help="override the preset's architecture")
    p.add_argument("--batch", type=int, default=None, help="override the preset's batch")
    p.add_argument("--image-size", type=int, default=None, help="override the preset's image size")
    p.add_argument("--precision", action="append", choices=tuple(DTYPES), help="repeatable (default fp32, bf16)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per row (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--u2net", default="full", choices=("full", "small"))
    p.add_argument("-j", "--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--csv", default=None, help=f"append rows here (default {CSV.relative_to(ROOT)})")
    p.add_argument("--no-csv", action="store_true")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: "pipeline|precision|cfg json|folder"
    args = p.parse_args(argv)
    for flag, value in (("--steps", args.steps), ("--batch", args.batch or 2), ("--image-size", args.image_size or 32)):
        if value < (2 if flag == "--batch" else 1):
            p.error(f"{flag}: too small ({value})")
    device = torch.device(args.device)
    if args.one:
        pipeline, precision, cfg, folder = args.one.split("|", 3)
        out = measure(args, json.loads(cfg), pipeline, precision, device, Path(folder))
        report(out)
        return [out]
    precisions = args.precision or ["fp32", "bf16"]
    cfgs = [dict(c) for c in PRESETS[args.preset]]
    for c in cfgs:
        c.update({k: v for k, v in (("arch", args.arch), ("batch", args.batch), ("image_size", args.image_size)) if v})
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    rows = []
    research_fp32: dict[str, float] = {}  # the research code trains in float32 only
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for cfg in cfgs:
            pre_s = build_cache(cfg, args, folder, device)[1] if args.method == "sgc" else 0.0
            for precision in precisions:
                results = {}
                for pipeline in pipelines(args.method, device):
                    child = without_options(argv if argv is not None else sys.argv[1:], ("--precision", "--csv"))
                    results[pipeline] = run_child(__file__, [*child, "--one", f"{pipeline}|{precision}|"
                                                             f"{json.dumps(cfg)}|{folder}"], f"{pipeline} {precision}")
                    print(f"{cfg['arch']} {cfg['image_size']} px b{cfg['batch']} {precision} {pipeline}: "
                          f"{results[pipeline]['step_s']:.3f} s/step, peak {results[pipeline]['peak_mb']:.0f} MB",
                          flush=True)
                research_s = results["research"]["step_s"]
                if precision == "fp32":
                    research_fp32[cfg["arch"]] = research_s
                fp32_s = research_fp32.get(cfg["arch"])
                for pipeline, r in results.items():
                    rows.append({
                        "date": stamp, "device": device_name(device), "torch": torch.__version__, "arch": cfg["arch"],
                        "method": args.method, "image_size": cfg["image_size"], "batch": cfg["batch"],
                        "steps": args.steps, "precision": precision, "pipeline": pipeline,
                        "u2net": args.u2net if args.method == "sgc" else "", "step_s": f"{r['step_s']:.3f}",
                        "images_per_s": f"{cfg['batch'] / r['step_s']:.2f}", "peak_mb": f"{r['peak_mb']:.0f}",
                        "memory": r["memory"], "precompute_s": f"{pre_s:.1f}" if "cache" in pipeline or (
                            pipeline.startswith("library") and not pipeline.endswith("loader")) and args.method == "sgc"
                        else "", "speedup_vs_research": f"{research_s / r['step_s']:.2f}",
                        "speedup_vs_research_fp32": f"{fp32_s / r['step_s']:.2f}" if fp32_s else ""})
    print(f"\n{rows[0]['device']}, torch {torch.__version__}, {args.method}, median of {args.steps} steps\n")
    print("| arch | px | batch | precision | pipeline | step s | images/s | peak MB | vs research | vs research fp32 |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['image_size']} | {r['batch']} | {r['precision']} | {r['pipeline']} | {r['step_s']} | "
              f"{r['images_per_s']} | {r['peak_mb']} | {r['speedup_vs_research']}x | "
              f"{r['speedup_vs_research_fp32'] or '-'}x |")
    if not args.no_csv:
        append_rows(Path(args.csv) if args.csv else CSV, COLUMNS, rows)
    return rows


if __name__ == "__main__":
    main()
