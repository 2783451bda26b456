"""Pieces shared by the training benchmarks (bench_train.py, bench_step.py): the machine's name, a process's peak
memory, random-weight U²-Net files, rows appended to a CSV, and one measurement per child process."""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

RESULT = "RESULT "


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} cpu x{os.cpu_count()}"


def peak_rss_mb() -> float:
    """This process's peak resident set (``VmHWM``). Not ``ru_maxrss``: Linux carries that over ``fork`` +
    ``execve``, so a child would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def u2net_weights(folder: Path, small: bool) -> Path:
    """A U²-Net weight file with random values (seed 0) in ``folder``: the official files are not shipped."""
    from sgc_fast.saliency.u2net import U2Net

    path = folder / ("u2netp.pth" if small else "u2net.pth")
    if not path.exists():
        torch.manual_seed(0)
        torch.save(U2Net(small=small).state_dict(), path)
    return path


def append_rows(path: Path, columns, rows: list[dict]) -> None:
    """Append ``rows`` to the CSV ``path`` (header written when the file is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"\nappended {len(rows)} rows to {path}")


def without_options(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without each of ``options`` and its value (``--opt v`` or ``--opt=v``), and without ``--no-csv``:
    the parent resolves those before starting a child."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif a != "--no-csv" and not a.startswith(tuple(f"{o}=" for o in options)):
            out.append(a)
    return out


def report(result: dict) -> None:
    """(child) hand ``result`` to the parent on stdout."""
    print(RESULT + json.dumps(result), flush=True)


def run_child(script: str, args: list[str], what: str) -> dict:
    """Run ``python script *args`` and return the result it reported; a failed child stops the benchmark with its
    output."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False)
    line = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
    if proc.returncode or not line:
        raise SystemExit(f"{Path(script).stem}: {what} failed:\n{proc.stdout[-1500:]}{proc.stderr[-2500:]}")
    return json.loads(line[-1][len(RESULT):])
