"""``python -m sgc_fast.demo`` (``make demo``): a baseline and an SGC ResNet-18 on the biased synthetic set.

Both models are trained from scratch with ``sgc-train`` on :class:`~sgc_fast.data.SyntheticShapes`
whose train split carries the background-hue shortcut with probability ``--bias``, then scored with
``sgc-eval`` on the unbiased split ``--split`` (``test``; the demo's settings were tuned on ``val``).
The network is ``resnet18_w32`` (ResNet-18 with 32 base channels, a quarter of the FLOPs) at 96 px with
``--output-stride 16``: 6x6 CAMs. One seed prints the ``sgc-eval`` table; several seeds (``--seeds 5``) print
each seed, the mean ± standard deviation and the paired per-seed gain over the baseline. Seeds and torch
threads (``--threads``) are fixed, so the same command on the same machine prints the same table.
Outputs: ``<out>/seed<k>/<method>/last.pt``, ``<out>/seed<k>/eval.json``, ``<out>/summary.json``, the heatmap
grid of the first seed (``--grid``) and, with ``--record``, a Markdown record of the tables, the commit and the
machine (``make demo`` writes ``docs/demo_results_seeds<N>.md``). Examples::

    python -m sgc_fast.demo                          # one seed, CPU, about 11 minutes on 2 cores
    python -m sgc_fast.demo --seeds 5 --out runs/demo5 --methods baseline sgc masked-ce
    python -m sgc_fast.demo --split val --bias 0.95 --lambda 2   # tuning (never on test)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from .files import atomic_write_text
from .train.models import ARCHS

__all__ = ["DEFAULTS", "METHOD_SPECS", "build_parser", "main", "summarize", "format_summary", "gains", "format_gains",
           "format_per_seed"]

# The demo's settings (tuned on the val split; see README "The main job").
DEFAULTS = {
    "arch": "resnet18_w32", "bias": 0.9, "image_size": 96, "output_stride": 16, "train_images": 2000, "epochs": 8,
    "batch_size": 32,
    "lr": 0.02, "lambda_": 1.0, "temperature": 0.5, "causal_limit": 100, "threads": 2,
}
SHOWN = ("acc1", "content_heatmap", "pointing_game", "insertion_auc", "deletion_auc")
_HEAD = {"acc1": "top-1 (%)", "content_heatmap": "CH (%)", "pointing_game": "PG (%)",
         "insertion_auc": "ins AUC", "deletion_auc": "del AUC"}
METHODS = ("baseline", "sgc")
#: What each demo row trains: (sgc-train --method, --lambda override). ``masked-ce`` is SGC's three cross-entropy
#: views without the SGC term (lambda = 0): the ablation that separates the term from the masked-view data.
METHOD_SPECS = {"baseline": ("baseline", None), "sgc": ("sgc", None), "masked-ce": ("sgc", 0.0),
                "cgc": ("cgc", None), "l2": ("l2", None)}


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(prog="python -m sgc_fast.demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (data set and initialisation)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--split", default="test", choices=("val", "test"), help="unbiased split to score on")
    p.add_argument("--out", default="runs/demo", help="directory for checkpoints, logs and JSON")
    p.add_argument("--grid", default="docs/demo_grid.png", help="heatmap grid PNG of the first seed ('' to skip)")
    p.add_argument("-a", "--arch", default=d["arch"], choices=ARCHS)
    p.add_argument("--bias", type=float, default=d["bias"], help="train-split background/class correlation")
    p.add_argument("--image-size", type=int, default=d["image_size"])
    p.add_argument("--output-stride", type=int, default=d["output_stride"], choices=(16, 32))
    p.add_argument("--train-images", type=int, default=d["train_images"])
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("-b", "--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--lambda", dest="lambda_", type=float, default=d["lambda_"])
    p.add_argument("-t", "--temperature", type=float, default=d["temperature"])
    p.add_argument("--causal-limit", type=int, default=d["causal_limit"], help="insertion/deletion on N images")
    p.add_argument("--eval-limit", type=int, default=None, help="score only the first N images of --split")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=tuple(METHOD_SPECS),
                   help="rows to train; masked-ce = sgc's cross-entropy views without the SGC term (lambda 0)")
    p.add_argument("-j", "--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=d["threads"],
                   help="torch CPU threads (fixed, so that the same machine prints the same table)")
    p.add_argument("--device", default="auto", help="auto (cuda when a GPU is visible, else cpu), cpu, cuda, cuda:1")
    p.add_argument("--record", default="", metavar="FILE.md",
                   help="also write the tables, the commit and the machine to this Markdown file (make demo does)")
    p.add_argument("--reuse", action="store_true",
                   help="keep a finished training of <out>/seed<k>/<method> whose checkpoint has the same settings "
                        "(to add a method or seeds to a run, or finish an interrupted one; same code only)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _train(args, name: str, seed: int, run_dir: Path) -> tuple[Path, bool]:
    """Train one row (or, with ``--reuse``, keep its finished training): ``(last.pt, reused)``."""
    from .train.cli import main as train_main

    method, lambda_ = METHOD_SPECS[name]
    lambda_ = args.lambda_ if lambda_ is None else lambda_
    out = run_dir / name
    argv = ["--dataset", "synthetic", "-a", args.arch, "--method", method, "--bias", str(args.bias), "--image-size",
            str(args.image_size), "--output-stride", str(args.output_stride), "--limit", str(args.train_images),
            "--epochs", str(args.epochs), "-b", str(args.batch_size), "--lr", str(args.lr), "--schedule", "cosine",
            "--lambda", str(lambda_), "-t", str(args.temperature), "--seed", str(seed), "-j", str(args.workers),
            "--device", args.device, "--save_dir", str(out), "--log_dir", str(out), "-p", "5"]
    if args.no_progress:
        argv.append("--no-progress")
    if args.reuse:
        why = reusable(out / "last.pt", argv)
        if why is None:
            print(f"[seed {seed}] {name}: reusing {out / 'last.pt'} (finished, same settings)", flush=True)
            return out / "last.pt", True
        print(f"[seed {seed}] {name}: training ({why})", flush=True)
    if (out / "train.jsonl").exists():  # a fresh log for a fresh run
        (out / "train.jsonl").unlink()
    print(f"[seed {seed}] sgc-train {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    train_main(argv)
    print(f"[seed {seed}] {name}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return out / "last.pt", False  # the model after the last epoch (no checkpoint selection)


#: sgc-train arguments that do not change what a run computes.
_NOT_RESULTS = {"no_progress", "print_freq", "debug", "workers", "log_dir", "save_dir", "resume"}


def reusable(path: Path, argv: list[str]) -> str | None:
    """None when ``path`` is a finished sgc-train checkpoint of exactly the run ``argv`` describes (every argument
    that changes the result equal), else why not."""
    from .train.checkpoint import load_checkpoint
    from .train.cli import build_parser

    if not path.is_file():
        return "no checkpoint yet"
    try:
        ckpt = load_checkpoint(path)
    except (OSError, ValueError, RuntimeError) as exc:
        return f"{path} unreadable: {exc}"
    want = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if k not in _NOT_RESULTS}
    saved = ckpt.get("args") or {}
    differ = sorted(k for k, v in want.items() if saved.get(k, None) != v)
    if differ:
        return f"{path} was trained with other settings: {', '.join(differ)}"
    if int(ckpt.get("epoch", -1)) != want["epochs"] or int(ckpt.get("step", 0)):
        return f"{path} is unfinished (epoch {ckpt.get('epoch')} of {want['epochs']})"
    return None


def _evaluate(args, ckpts: list[Path], names: list[str], seed: int, run_dir: Path, grid: str | None) -> dict:
    from .eval.cli import main as eval_main

    argv = ["--checkpoint", *map(str, ckpts), "--names", *names, "--split", args.split, "--seed", str(seed),
            "--causal-limit", str(args.causal_limit), "--device", args.device, "-j", str(args.workers),
            "--out", str(run_dir / "eval.json")]
    if args.eval_limit is not None:
        argv += ["--limit", str(args.eval_limit)]
    if grid:
        argv += ["--grid", grid]
    if args.no_progress:
        argv.append("--no-progress")
    print(f"[seed {seed}] sgc-eval {' '.join(argv)}", flush=True)
    return eval_main(argv)


def summarize(per_seed: list[dict]) -> dict:
    """``{name: {metric: (mean, std, n)}}`` over seeds (sample std; 0 for one seed)."""
    out: dict[str, dict] = {}
    for name in per_seed[0]:
        out[name] = {}
        for key in SHOWN:
            vals = [s[name][key] for s in per_seed if s[name].get(key) is not None]
            if not vals:
                out[name][key] = (None, None, 0)
                continue
            out[name][key] = (*_mean_std(vals), len(vals))
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _cell(key: str, mean, std, n: int, sign: str = "") -> str:
    """``mean`` (``sign="+"``: always signed), ``± std`` over ``n > 1`` seeds; 3 digits for the AUCs, else 1."""
    if mean is None:
        return "-"
    digits = 3 if key in ("insertion_auc", "deletion_auc") else 1
    return f"{mean:{sign}.{digits}f}" if n <= 1 else f"{mean:{sign}.{digits}f} ± {std:.{digits}f}"


def format_summary(summary: dict, seeds: int) -> str:
    """A Markdown table: one row per method, mean ± std over ``seeds`` seeds."""
    head = ["method", *(_HEAD[k] for k in SHOWN)]
    return _markdown(head, [[name, *(_cell(k, *stats[k]) for k in SHOWN)] for name, stats in summary.items()])


def gains(per_seed: list[dict], method: str, base: str = "baseline") -> dict:
    """``{metric: (mean, std, n, higher)}`` of the per-seed difference ``method - base`` (sample std; ``higher``:
    seeds where ``method`` scored more). The effect is clear when ``mean > 2 std``."""
    out = {}
    for key in SHOWN:
        diffs = [s[method][key] - s[base][key] for s in per_seed
                 if s[method].get(key) is not None and s[base].get(key) is not None]
        if not diffs:
            out[key] = (None, None, 0, 0)
            continue
        out[key] = (*_mean_std(diffs), len(diffs), sum(d > 0 for d in diffs))
    return out


def format_gains(per_seed: list[dict], methods: list[str], base: str = "baseline") -> str:
    """A Markdown table: per method other than ``base``, its gain over ``base`` in each metric as
    mean ± std over seeds, then ``[k/n]``: on how many seeds it was higher."""
    head = ["gain over " + base, *(_HEAD[k] for k in SHOWN)]
    rows = []
    for m in methods:
        if m == base:
            continue
        g = gains(per_seed, m, base)
        rows.append([m, *("-" if g[k][0] is None else _cell(k, *g[k][:3], sign="+") + f" [{g[k][3]}/{g[k][2]}]"
                          for k in SHOWN)])
    return _markdown(head, rows)


def format_per_seed(per_seed: list[dict], seeds: list[int]) -> str:
    head = ["seed", "method", *(_HEAD[k] for k in SHOWN)]
    rows = [[str(seed), name, *(_cell(k, row.get(k), 0.0, 1) for k in SHOWN)]
            for seed, result in zip(seeds, per_seed, strict=True) for name, row in result.items()]
    return _markdown(head, rows)


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def machine(device: str) -> str:
    """The device in words: the GPU's name, or the CPU model and its core count."""
    import os
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def commit() -> str:
    """``git describe`` of the checkout this module runs from (``+ local changes`` when its tree is dirty)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" + local changes" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"demo: --seeds must be >= 1, got {args.seeds}")
    if args.threads < 1:
        raise SystemExit(f"demo: --threads must be >= 1, got {args.threads}")
    if len(set(args.methods)) != len(args.methods):
        raise SystemExit(f"demo: --methods lists a method twice: {' '.join(args.methods)}")
    if args.output_stride == 32 and args.image_size < 224:
        print(f"demo: note: at --image-size {args.image_size} with --output-stride 32 the CAMs are "
              f"{math.ceil(args.image_size / 32)}x{math.ceil(args.image_size / 32)}", flush=True)
    import torch

    args.device = resolve_device(args.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # the thread count changes float reductions: fixed, like the seeds
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)


def _run(args, argv: list[str] | None) -> dict:
    import torch

    out = Path(args.out)
    from .files import check_writable

    try:  # before ~10 minutes of training
        check_writable(out, "--out")
        if args.grid:
            check_writable(args.grid, "--grid", folder=False)
        if args.record:
            check_writable(args.record, "--record", folder=False)
    except ValueError as exc:
        raise SystemExit(f"demo: {exc}") from None
    t_start = time.perf_counter()
    code = commit()  # the code that runs, before any later edit of the checkout
    per_seed, reused = [], []
    for k in range(args.seeds):
        seed = args.first_seed + k
        run_dir = out / f"seed{seed}"
        trained = [_train(args, m, seed, run_dir) for m in args.methods]
        ckpts = [path for path, _ in trained]
        reused += [f"seed {seed} {m}" for m, (_, again) in zip(args.methods, trained, strict=True) if again]
        result = _evaluate(args, ckpts, list(args.methods), seed, run_dir, args.grid if k == 0 else None)
        per_seed.append({r["name"]: r for r in result["results"]})
        if args.seeds > 1:
            print(f"\n[seed {seed}] unbiased {args.split} split\n{format_summary(summarize(per_seed[-1:]), 1)}\n",
                  flush=True)
    summary = summarize(per_seed)
    table = format_summary(summary, args.seeds)
    gain_table = format_gains(per_seed, list(args.methods)) if "baseline" in args.methods and \
        len(args.methods) > 1 else ""
    minutes = (time.perf_counter() - t_start) / 60
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    title = (f"{args.arch}, synthetic shapes, train bias {args.bias}, {args.image_size} px, output stride "
             f"{args.output_stride}; scored on the unbiased {args.split} split; seeds {seeds}"
             f"{' (mean ± std)' if args.seeds > 1 else ''}")
    print(f"\n{title}; {minutes:.1f} min\n")
    print(table)
    if gain_table:
        print(f"\n{gain_table}")
    record = {"args": vars(args), "seeds": seeds, "minutes": round(minutes, 2), "per_seed": per_seed,
              "summary": {n: {k: list(v) for k, v in s.items()} for n, s in summary.items()}, "table": table,
              "gains": gain_table, "commit": code, "reused": reused, "machine": machine(args.device), "torch": torch.__version__}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(record, indent=2, default=str))
    if args.record:
        atomic_write_text(args.record, _record_markdown(record, title, argv))
    wrote = [str(out / "summary.json"), *(p for p in (args.grid, args.record) if p)]
    print(f"\nwrote {', '.join(wrote)}")
    return record


def _record_markdown(record: dict, title: str, argv: list[str] | None) -> str:
    command = " ".join(["python -m sgc_fast.demo", *(sys.argv[1:] if argv is None else argv)])
    seeds = record["seeds"]
    parts = [
        "<!-- Written by the demo (--record); regenerate it with the command below, do not edit. -->",
        f"# Demo results, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}",
        "",
        f"`{command}`",
        "",
        f"{title}. Commit {record['commit']}; {record['machine']}, {record['args']['threads']} torch threads; "
        f"torch {record['torch']}; {record['minutes']:.1f} min.",
        *([f"Reused finished trainings of an earlier run of the same settings (`--reuse`; trained by the code of "
           f"that run): {', '.join(record['reused'])}."] if record["reused"] else []),
        "",
        record["table"],
    ]
    if record["gains"]:
        parts += ["", "Gain over the baseline, per seed (mean ± sample std of the paired differences; [k/n]: seeds "
                  "on which the method scored higher):", "", record["gains"]]
    if len(seeds) > 1:
        parts += ["", "Per seed:", "", format_per_seed(record["per_seed"], seeds)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
