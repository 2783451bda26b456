"""benchmarks/bench_cam.py runs end to end on tiny shapes and appends sane rows (the numbers themselves are
benchmark results, not test assertions)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_cam  # noqa: E402


def test_bench_cam_appends_rows(tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    out = tmp_path / "cam.csv"
    argv = ["--models", "resnet18", "--batches", "2", "--size", "64", "--reps", "1", "--warmup", "0"]
    argv += ["--methods", "sgc_fast", "grad-cam", "--threads", "1", "--csv", str(out)]
    assert bench_cam.main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["method"] for r in rows] == ["sgc_fast", "grad-cam"]
    for r in rows:
        assert r.keys() == set(bench_cam.COLUMNS) and r["model"] == "resnet18" and r["B"] == "2"
        assert float(r["median_ms"]) > 0 and float(r["forward_ms"]) > 0 and float(r["images_per_s"]) > 0


def test_bench_cam_refuses_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_cam.main(["--reps", "0", "--csv", str(tmp_path / "x.csv")])
    assert exc.value.code == 2 and "--reps" in capsys.readouterr().err
