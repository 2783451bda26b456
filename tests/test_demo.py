"""``--output-stride 16`` (7x7 CAMs at 112 px) and the demo driver (``python -m sgc_fast.demo``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sgc_fast.demo import format_gains, format_summary, gains, summarize
from sgc_fast.demo import main as demo_main
from sgc_fast.eval.cli import cams
from sgc_fast.train.models import build_model, forward_feats, set_output_stride

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_output_stride_16_gives_7x7_at_112(arch):
    torch.manual_seed(0)
    m16 = build_model(arch, 3, output_stride=16).eval()
    m32 = build_model(arch, 3).eval()
    m32.load_state_dict(m16.state_dict())  # same parameters, only the strides differ
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        logits16, feats16 = forward_feats(m16, x)
        _, feats32 = forward_feats(m32, x)
    assert feats16.shape[-2:] == (7, 7) and feats32.shape[-2:] == (4, 4)
    assert logits16.shape == (2, 3)
    _, cam = cams(m16, x, torch.tensor([0, 2]))
    assert cam.shape == (2, 7, 7) and bool((cam >= 0).all())


def test_output_stride_errors():
    with pytest.raises(ValueError, match="output_stride"):
        build_model("resnet18", 3, output_stride=8)
    with pytest.raises(ValueError, match="output_stride"):
        set_output_stride(torch.nn.Linear(2, 2), 16)


def test_summary_mean_and_sample_std():
    per_seed = [{"a": {"acc1": 10.0, "content_heatmap": 1.0, "pointing_game": 2.0, "insertion_auc": 0.5,
                       "deletion_auc": None}},
                {"a": {"acc1": 20.0, "content_heatmap": 3.0, "pointing_game": 2.0, "insertion_auc": 0.7,
                       "deletion_auc": None}}]
    s = summarize(per_seed)["a"]
    assert s["acc1"] == (15.0, pytest.approx(50.0 ** 0.5), 2)
    assert s["pointing_game"] == (2.0, 0.0, 2)
    assert s["insertion_auc"][0] == pytest.approx(0.6)
    assert s["deletion_auc"] == (None, None, 0)
    table = format_summary(summarize(per_seed), 2)
    assert "15.0 ± 7.1" in table and "0.600 ± 0.141" in table and table.count("\n") == 2


def test_gains_are_paired_per_seed():
    def seed(base, sgc):
        return {"baseline": {"acc1": base, "pointing_game": 10.0}, "sgc": {"acc1": sgc, "pointing_game": 60.0}}

    per_seed = [seed(20.0, 40.0), seed(30.0, 44.0), seed(25.0, 24.0)]  # differences 20, 14, -1
    g = gains(per_seed, "sgc")
    mean, std, n, higher = g["acc1"]
    assert mean == pytest.approx(11.0) and std == pytest.approx(((81 + 9 + 144) / 2) ** 0.5) and (n, higher) == (3, 2)
    assert g["pointing_game"] == (50.0, 0.0, 3, 3)
    assert g["content_heatmap"] == (None, None, 0, 0)
    table = format_gains(per_seed, ["baseline", "sgc"])
    assert "+11.0 ± 10.8 [2/3]" in table and "+50.0 ± 0.0 [3/3]" in table and table.count("\n") == 2


def test_demo_end_to_end_tiny(tmp_path):
    """The whole driver at a toy size: two trainings, one evaluation, summary JSON, grid and the Markdown record;
    a second run prints the same table (fixed seeds and threads)."""
    grid, record = tmp_path / "grid.png", tmp_path / "docs" / "record.md"
    argv = ["--out", str(tmp_path / "runs"), "--grid", str(grid), "--image-size", "32", "--train-images", "32",
            "--epochs", "1", "-b", "16", "--eval-limit", "8", "--causal-limit", "2", "-j", "0", "--no-progress",
            "--split", "val", "--record", str(record), "--threads", "1"]
    rec = demo_main(argv)
    saved = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert saved["seeds"] == [0] and set(saved["summary"]) == {"baseline", "sgc"}
    for name in ("baseline", "sgc"):
        row = rec["per_seed"][0][name]
        assert row["images"] == 8 and row["causal_images"] == 2
        assert (tmp_path / "runs" / "seed0" / name / "last.pt").is_file()
        ck = torch.load(tmp_path / "runs" / "seed0" / name / "last.pt", weights_only=False)
        assert ck["output_stride"] == 16 and ck["method"] == name
    assert grid.is_file() and grid.stat().st_size > 0
    assert "baseline" in rec["table"] and "sgc" in rec["table"]
    text = record.read_text()
    assert rec["table"] in text and rec["gains"] in text and "gain over baseline" in rec["gains"]
    assert "Commit " in text and "torch threads" in text and "--record" in text
    again = demo_main([*argv, "--grid", "", "--record", ""])
    assert again["table"] == rec["table"]


def test_demo_reuse_adds_a_method_without_retraining(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "runs"), "--grid", "", "--image-size", "32", "--train-images", "16",
            "--epochs", "1", "-b", "8", "--eval-limit", "4", "--causal-limit", "0", "-j", "0", "--no-progress",
            "--split", "val", "--threads", "1"]
    first = demo_main(argv)
    ckpt = tmp_path / "runs" / "seed0" / "sgc" / "last.pt"
    stamp = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    record = tmp_path / "ablation.md"
    more = demo_main([*argv, "--reuse", "--methods", "baseline", "sgc", "masked-ce", "--record", str(record)])
    assert more["reused"] == ["seed 0 baseline", "seed 0 sgc"]
    assert "Reused finished trainings of an earlier run" in record.read_text()
    out = capsys.readouterr().out
    assert "baseline: reusing" in out and "sgc: reusing" in out and "masked-ce: training (no checkpoint yet)" in out
    assert ckpt.stat().st_mtime_ns == stamp
    for name in ("baseline", "sgc"):
        assert more["per_seed"][0][name]["acc1"] == first["per_seed"][0][name]["acc1"]
    demo_main([*argv, "--reuse", "--lr", "0.03", "--methods", "baseline"])  # other settings: trained again
    out = capsys.readouterr().out
    assert "baseline: training (" in out and "trained with other settings: lr" in out


def test_demo_masked_ce_is_sgc_without_the_term(tmp_path):
    rec = demo_main(["--out", str(tmp_path / "runs"), "--grid", "", "--image-size", "32", "--train-images", "16",
                     "--epochs", "1", "-b", "8", "--eval-limit", "4", "--causal-limit", "0", "-j", "0",
                     "--no-progress", "--split", "val", "--methods", "baseline", "masked-ce", "--threads", "1"])
    ck = torch.load(tmp_path / "runs" / "seed0" / "masked-ce" / "last.pt", weights_only=False)
    assert ck["method"] == "sgc" and ck["args"]["lambda_"] == 0.0
    assert set(rec["per_seed"][0]) == {"baseline", "masked-ce"} and "masked-ce" in rec["gains"]


@pytest.mark.parametrize("argv, match", [(["--seeds", "0"], "seeds"), (["--threads", "0"], "threads"),
                                         (["--methods", "sgc", "sgc"], "twice")])
def test_demo_rejects_nonsense(tmp_path, argv, match):
    with pytest.raises(SystemExit, match=match):
        demo_main([*argv, "--out", str(tmp_path)])


ROOT = Path(__file__).resolve().parents[1]


def _tables(text: str) -> list[str]:
    """The Markdown tables of ``text``: runs of consecutive lines that start with ``|``."""
    tables, run = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            run.append(line)
        elif run:
            tables.append("\n".join(run))
            run = []
    return tables


def test_readme_copies_the_demo_records():
    """The demo tables in README.md and docs/demo.md are the ones the demo wrote (docs/demo_*seeds<N>.md),
    verbatim: the results of `make demo` and `make demo SEEDS=5` in the README, the ablation in docs/demo.md."""
    records = {r.name: r for r in (ROOT / "docs").glob("demo_*seeds*.md")}
    assert {"demo_results_seeds1.md", "demo_results_seeds5.md"} <= set(records)
    for name, record in sorted(records.items()):
        where = ROOT / ("README.md" if name.startswith("demo_results") else "docs/demo.md")
        target = where.read_text(encoding="utf-8")
        text = record.read_text(encoding="utf-8")
        assert text.startswith("<!-- Written by the demo (--record)")
        tables = _tables(text)
        assert len(tables) >= 2, name  # the summary and the gains over the baseline
        for table in tables[:2]:
            assert table in target, f"{where.name} does not copy this table of docs/{name}:\n{table}"
