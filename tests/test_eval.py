"""sgc-eval (``sgc_fast.eval``) and the heatmap drawing (``sgc_fast.viz``) on a tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sgc_fast.eval import METRICS
from sgc_fast.eval import main as eval_main
from sgc_fast.eval.cli import pick_grid_rows
from sgc_fast.train.cli import main as train_main
from sgc_fast.viz import grid_size, jet, overlay, save_grid

TRAIN = ["--dataset", "synthetic", "--image-size", "32", "--allow-degenerate", "--epochs", "1", "-b", "16", "--limit", "32", "-j", "0",
         "--seed", "0", "--no-progress", "--method", "sgc", "--saliency", "ground-truth"]
COMMON = ["-j", "0", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_ckpt")
    train_main([*TRAIN, "--save_dir", str(tmp / "ckpt"), "--log_dir", str(tmp / "logs")])
    return tmp / "ckpt"


def _check_row(row, images, causal):
    for key in METRICS:
        assert key in row
    assert row["images"] == images
    for key in ("acc1", "acc5", "content_heatmap", "pointing_game", "stochastic_pointing_game"):
        assert 0.0 <= row[key] <= 100.0, (key, row[key])
    assert row["acc1"] <= row["acc5"]
    if causal:
        assert row["causal_images"] == causal
        for key in ("insertion_auc", "deletion_auc"):
            assert 0.0 <= row[key] <= 1.0, (key, row[key])
    else:
        assert row["insertion_auc"] is None and row["deletion_auc"] is None


def test_eval_synthetic_json_and_grid(ckpt, tmp_path):
    out, grid = tmp_path / "results.json", tmp_path / "grid.png"
    res = eval_main(["--checkpoint", str(ckpt / "best.pt"), str(ckpt / "last.pt"), "--names", "best", "last",
                     "--limit", "12", "-b", "8", "--causal-limit", "3", "--out", str(out), "--grid", str(grid),
                     "--grid-n", "4", *COMMON])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(res))
    assert [r["name"] for r in saved["results"]] == ["best", "last"]
    assert saved["config"]["split"] == "test" and saved["config"]["image_size"] == 32  # from the checkpoint
    for row in saved["results"]:
        _check_row(row, 12, causal=3)
    # 1 epoch: best.pt == last.pt, and the run is deterministic (seeded stochastic pointing game)
    a, b = saved["results"]
    assert all(a[k] == b[k] for k in METRICS)
    with Image.open(grid) as im:
        assert im.format == "PNG"
        assert im.size == grid_size(4, 2, 96, captions=True)  # 32 px images -> the minimum 96 px cells


def test_grid_rows_differ_most_then_random():
    a = [{"pos": k, "ch": 50.0, "pg": 100.0, "pred": 0} for k in range(10)]
    b = [dict(r) for r in a]
    b[7]["ch"], b[3]["pg"], b[5]["ch"] = 10.0, 0.0, float("nan")  # gaps: 7 -> 40, 3 -> 100, 5 -> 50 (no mass)
    rows = pick_grid_rows([a, b], 6, seed=0)
    assert rows[:3] == [(3, "differ"), (5, "differ"), (7, "differ")]
    rest = [pos for pos, why in rows[3:]]
    assert [why for _, why in rows[3:]] == ["random"] * 3 and not set(rest) & {3, 5, 7} and len(set(rest)) == 3
    assert rows == pick_grid_rows([a, b], 6, seed=0)  # seeded
    assert all(why == "random" for _, why in pick_grid_rows([a], 4, seed=1))  # one model: nothing to compare
    assert len(pick_grid_rows([a, b], 50, seed=0)) == 10  # never more rows than images


def test_center_view_top1_matches_sgc_train(ckpt, tmp_path):
    """--view center --split val is sgc-train's validation: same top-1 / top-5 as ``sgc-train -e``."""
    ref = train_main([*TRAIN, "-e", "--resume", str(ckpt / "best.pt")])
    res = eval_main(["--checkpoint", str(ckpt / "best.pt"), "--split", "val", "--view", "center", "--limit", "32",
                     "--no-causal", "--out", str(tmp_path / "r.json"), *COMMON])
    row = res["results"][0]
    _check_row(row, 32, causal=0)
    assert row["acc1"] == pytest.approx(ref["acc1"]) and row["acc5"] == pytest.approx(ref["acc5"])


def test_folder_boxes_json_and_voc_match_synthetic(ckpt, tmp_path):
    from sgc_fast.data.synthetic import SyntheticShapes

    ds = SyntheticShapes(split="test", size=32, length=10, seed=0)
    split_dir = ds.write_imagefolder(tmp_path / "data")
    table = json.loads((split_dir / "boxes.json").read_text())
    ann, hard = tmp_path / "annotation", tmp_path / "annotation_difficult"
    for rel, boxes in table.items():  # the same boxes as Pascal-VOC XML (1-based, inclusive)
        cls = rel.split("/")[0]
        for root, difficult in ((ann, 0), (hard, 1)):  # in `hard`, every object is difficult
            objs = "".join(f"<object><name>{cls}</name><difficult>{difficult}</difficult><bndbox><xmin>{b[0] + 1:g}"
                           f"</xmin><ymin>{b[1] + 1:g}</ymin><xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox></object>"
                           for b in boxes)
            path = (root / rel).with_suffix(".xml")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"<annotation><size><width>32</width><height>32</height></size>{objs}</annotation>")
    args = ["--checkpoint", str(ckpt / "best.pt"), "--no-causal", "--out", "", *COMMON]
    synth = eval_main([*args, "--limit", "10"])["results"][0]
    folder = eval_main([str(tmp_path / "data"), "--dataset", "folder", "--split", "test", *args])["results"][0]
    voc = eval_main([str(tmp_path / "data"), "--dataset", "folder", "--split", "test", "--annotations", str(ann),
                     *args])["results"][0]
    # ImageFolder orders by class, the synthetic split by index: same images, so the same means
    for key in ("acc1", "acc5", "content_heatmap", "pointing_game"):
        assert folder[key] == pytest.approx(synth[key], abs=1e-3), key
        assert voc[key] == pytest.approx(folder[key], abs=1e-6), key
    assert voc["spg_images"] == voc["ch_images"] > 0  # only zero-mass CAMs are skipped
    # difficult objects count for the content heatmap and pointing game, but the stochastic pointing game
    # skips images whose target boxes are all difficult
    diff = eval_main([str(tmp_path / "data"), "--dataset", "folder", "--split", "test", "--annotations", str(hard),
                      *args])["results"][0]
    assert diff["spg_images"] == 0 and diff["stochastic_pointing_game"] is None and diff["images"] == 10
    for key in ("acc1", "content_heatmap", "pointing_game"):
        assert diff[key] == pytest.approx(voc[key], abs=1e-6), key


def test_names_must_match(ckpt):
    with pytest.raises(SystemExit):
        eval_main(["--checkpoint", str(ckpt / "best.pt"), "--names", "a", "b", "--out", "", *COMMON])


def test_overlay_shape_dtype():
    img = torch.rand(3, 20, 30)
    cam = torch.zeros(20, 30)
    cam[5, 7] = 1.0
    out = overlay(img, cam)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    pil = Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    out2 = overlay(pil, torch.rand(5, 6))  # PIL input, CAM at another resolution
    assert out2.shape == (20, 30, 3) and out2.dtype == np.uint8
    assert overlay(img, torch.zeros(20, 30)).shape == (20, 30, 3)  # zero map: no division by zero
    c = jet(np.array([0.0, 0.5, 1.0]))
    assert c.dtype == np.uint8 and c[0, 2] > c[0, 0] and c[2, 0] > c[2, 2]  # blue -> red


def test_save_grid_size(tmp_path):
    images = [torch.rand(3, 40, 40) for _ in range(3)]
    cams = [torch.rand(3, 40, 40), np.random.rand(3, 10, 10)]
    size = save_grid(tmp_path / "g.png", images, cams, ["model a", "a very long model name indeed"], cell=64)
    with Image.open(tmp_path / "g.png") as im:
        assert im.size == size == grid_size(3, 2, 64)
    with pytest.raises(ValueError):
        save_grid(tmp_path / "bad.png", images, cams, ["only one"])
    captions = [["CH 10 PG hit"] * 3, ["CH 90 PG miss -> a very long class name"] * 3]
    size = save_grid(tmp_path / "c.png", images, cams, ["a", "b"], cell=64, captions=captions,
                     row_labels=["x", "y", "z"])
    with Image.open(tmp_path / "c.png") as im:
        assert im.size == size == grid_size(3, 2, 64, captions=True) and size[1] > grid_size(3, 2, 64)[1]
    with pytest.raises(ValueError, match="captions"):
        save_grid(tmp_path / "bad.png", images, cams, ["a", "b"], captions=captions[:1])
    with pytest.raises(ValueError, match="row_labels"):
        save_grid(tmp_path / "bad.png", images, cams, ["a", "b"], row_labels=["x"])
