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


def test_bench_cam_table(tmp_path):
    out = tmp_path / "cam.csv"
    rows = []
    for method, overhead in (("sgc_fast:input", 2.0), ("grad-cam", 500.0)):
        row = dict.fromkeys(bench_cam.COLUMNS, "1")
        row |= {"date": "2026-12-06T00:00", "device": "cpu", "model": "resnet50", "B": "16", "method": method}
        row |= {"overhead_ms": str(overhead), "forward_ms": "900", "images_per_s": "10", "peak_mb": "5"}
        rows.append(row)
    bench_cam.append_rows(out, rows)
    md = tmp_path / "cam.md"
    assert bench_cam.main(["--csv", str(out), "--table", str(md)]) == 0
    text = md.read_text()
    assert "| resnet50 | 16 | 900.0 | 2.0 | 500.0 | 250x |" in text
