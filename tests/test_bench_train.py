"""benchmarks/bench_train.py --precision runs end to end on a tiny epoch and appends sane rows (the numbers are
benchmark results, not test assertions)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_train  # noqa: E402


def test_bench_train_precision_rows(tmp_path):
    out = tmp_path / "p.csv"
    argv = ["--precision", "fp32", "--precision", "bf16", "--repeats", "1", "--images", "8", "-b", "4",
            "--image-size", "48", "--csv", str(out)]
    rows = bench_train.main(argv)
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    written = list(csv.DictReader(out.open()))
    assert [r["precision"] for r in written] == ["fp32", "bf16"]
    for r in written:
        assert r.keys() == set(bench_train.PRECISION_COLUMNS)
        assert float(r["epoch_s"]) > 0 and float(r["peak_mb"]) > 0 and r["memory"] == "process peak RSS"
    assert written[0]["speedup_vs_first"] == "1.00"
