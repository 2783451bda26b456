"""sgc_fast.metrics on hand-made cases with known answers, brute-force references, and the readers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sgc_fast.metrics import (
    blur,
    blur_kernel,
    box_mask,
    causal_curve,
    content_heatmap,
    curve_auc,
    deletion_auc,
    insertion_auc,
    pointing_game,
    read_cub_boxes,
    read_voc_boxes,
    stochastic_pointing_game,
    synthetic_boxes,
)
from sgc_fast.metrics.boxes import box_pixel_ranges, box_sq_distance
from sgc_fast.metrics.causal import _pixels_per_step

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BOX = [[10.0, 10.0, 20.0, 20.0]]  # columns/rows 10..19


def _delta(h: int, w: int, r: int, c: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    m = torch.zeros(1, h, w, device=device, dtype=dtype)
    m[0, r, c] = 1.0
    return m


# ------------------------------------------------------------------------------------ boxes / masks


def test_box_mask_union_fractional_and_clipped():
    boxes = [[[1, 1, 3, 4], [2, 2, 5, 3]], [[-3, 4.5, 2.2, 99]], torch.zeros(0, 4)]
    m = box_mask(boxes, 6, 7)
    want = torch.zeros(3, 6, 7, dtype=torch.bool)
    want[0, 1:4, 1:3] = True
    want[0, 2:3, 2:5] = True
    want[1, 5:, 0:3] = True  # rows ceil(4.5)=5.., cols 0..ceil(2.2)-1=2
    assert torch.equal(m, want)


def test_box_sq_distance_matches_brute_force():
    h, w = 23, 17
    boxes = []
    for _ in range(4):
        n = int(torch.randint(0, 4, ()))
        xy = torch.randint(-5, 25, (n, 2, 2))
        boxes.append(torch.cat([xy.amin(1), xy.amax(1) + 1], 1).float())
    mask = box_mask(boxes, h, w)
    rr, cc = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pts = torch.stack([rr.flatten(), cc.flatten()], 1)  # [HW, 2]
    got = box_sq_distance(box_pixel_ranges(boxes, h, w, "cpu"), pts[:, 0].expand(4, -1), pts[:, 1].expand(4, -1))
    for i in range(4):
        gt = mask[i].nonzero()
        if len(gt) == 0:
            assert (got[i] == torch.iinfo(torch.int64).max).all()
            continue
        ref = ((pts[:, None, :] - gt[None]) ** 2).sum(-1).amin(1)
        assert torch.equal(got[i], ref)


# ----------------------------------------------------------------------------------- content heatmap


@pytest.mark.parametrize("device", DEVICES)
def test_content_heatmap_known_answers(device):
    h, w = 32, 40
    inside = torch.zeros(h, w)
    inside[12:18, 11:19] = torch.rand(6, 8) + 0.1
    uniform = torch.full((h, w), 0.3)
    maps = torch.stack([inside, uniform, torch.zeros(h, w), uniform]).to(device)
    boxes = [BOX, [[0, 0, 10, 10], [5, 5, 15, 15]], BOX, torch.zeros(0, 4)]
    ch = content_heatmap(maps, boxes)
    assert ch.device.type == device and ch.dtype == torch.float32
    assert ch[0].item() == pytest.approx(1.0, abs=1e-6)
    assert ch[1].item() == pytest.approx((100 + 100 - 25) / (h * w), abs=1e-6)  # overlap counted once
    assert math.isnan(ch[2].item())
    assert ch[3].item() == 0.0
    assert torch.nanmean(ch[:2]).item() == pytest.approx((1 + 175 / (h * w)) / 2, abs=1e-6)


def test_content_heatmap_float64_and_reference():
    maps = torch.rand(3, 9, 11, dtype=torch.float64)
    boxes = [[[1, 2, 5, 7]], [[0, 0, 11, 9]], [[3, 3, 4, 4], [8, 1, 11, 5]]]
    ch = content_heatmap(maps, boxes)
    assert ch.dtype == torch.float64
    mask = box_mask(boxes, 9, 11)
    ref = torch.stack([(maps[i] / maps[i].sum() * mask[i]).sum() for i in range(3)])
    torch.testing.assert_close(ch, ref, rtol=1e-12, atol=0)
    assert ch[1].item() == pytest.approx(1.0)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="maps"):
        content_heatmap(torch.rand(4, 4), [BOX])
    with pytest.raises(ValueError, match="boxes"):
        content_heatmap(torch.rand(2, 4, 4), [BOX])
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        content_heatmap(torch.rand(1, 4, 4), [[[1, 2, 3]]])


# ------------------------------------------------------------------------------------ pointing games


@pytest.mark.parametrize("device", DEVICES)
def test_pointing_game_tolerance_is_strict_and_exact(device):
    h, w = 40, 50
    cases = [  # (row, col, tolerance, hit)
        (15, 15, 15, True),  # inside
        (15, 34, 15, False),  # dx = 34 - 19 = 15: distance exactly 15
        (15, 33, 15, True),  # 14
        (24, 33, 15, True),  # sqrt(14^2 + 5^2) = 14.87
        (24, 33, 14.9, True),  # 221 < 222.01
        (15, 34, 14.9, False),
        (15, 34, 15.0001, True),
        (0, 0, 15, True),  # sqrt(200) to the corner (10, 10)
        (30, 30, 15, False),  # sqrt(11^2 + 11^2) = 15.56 from (19, 19)
    ]
    for r, c, tol, hit in cases:
        got = pointing_game(_delta(h, w, r, c, device), [BOX], tolerance=tol)
        assert got.dtype == torch.bool and got.shape == (1,)
        assert bool(got) is hit, (r, c, tol)


def test_pointing_game_first_max_on_ties_and_batching():
    h, w = 40, 50
    far_first = torch.zeros(h, w)
    far_first[0, 49] = 1.0  # row-major first, far from the box
    far_first[15, 15] = 1.0
    in_first = torch.zeros(h, w)
    in_first[15, 15] = 1.0
    in_first[39, 49] = 1.0
    got = pointing_game(torch.stack([far_first, in_first, torch.zeros(h, w)]), [BOX, BOX, [[0, 0, 1, 1]]])
    assert got.tolist() == [False, True, True]  # a constant map points at (0, 0)
    assert not pointing_game(_delta(h, w, 15, 15), [torch.zeros(0, 4)]).item()  # no box: never hits


@pytest.mark.parametrize("device", DEVICES)
def test_stochastic_pointing_game_deltas_and_zero_maps(device):
    h, w = 40, 50
    maps = torch.cat([_delta(h, w, 15, 15, device), _delta(h, w, 39, 49, device), torch.zeros(1, h, w, device=device)])
    g = torch.Generator(device=device).manual_seed(0)
    spg = stochastic_pointing_game(maps, [BOX, BOX, BOX], samples=100, generator=g)
    assert spg[0].item() == 1.0 and spg[1].item() == 0.0 and math.isnan(spg[2].item())


def test_stochastic_pointing_game_distribution_and_determinism():
    h, w = 40, 50
    m = torch.zeros(2, h, w)
    m[:, 15, 15] = 3.0  # hit
    m[:, 39, 49] = 7.0  # miss
    m[1] *= 0.5  # scale does not matter
    run = [
        stochastic_pointing_game(m, [BOX, BOX], samples=4000, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(run[0], run[1])
    torch.testing.assert_close(run[0], torch.full((2,), 0.3), atol=0.04, rtol=0)  # ~5 sigma


def test_stochastic_pointing_game_matches_per_sample_grid_reference():
    h, w = 21, 26
    maps = torch.rand(3, h, w) ** 4
    boxes = [[[2, 3, 6, 9]], [[10, 1, 26, 4], [0, 15, 3, 21]], torch.zeros(0, 4)]
    spg = stochastic_pointing_game(maps, boxes, samples=50, tolerance=4, generator=torch.Generator().manual_seed(3))
    idx = torch.multinomial(maps.flatten(1), 50, replacement=True, generator=torch.Generator().manual_seed(3))
    mask = box_mask(boxes, h, w)
    rr, cc = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for i in range(3):
        hits = [bool(((rr - s // w) ** 2 + (cc - s % w) ** 2 < 16)[mask[i]].any()) for s in idx[i].tolist()]
        assert spg[i].item() == pytest.approx(sum(hits) / 50)


# ------------------------------------------------------------------------------- insertion/deletion


class MeanChannel0(nn.Module):
    """Two logits ``(a * mean(x[:, 0]), 0)``: ``p0 = sigmoid(a * mean)``; has BatchNorm to check modes."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a
        self.bn = nn.BatchNorm1d(1)  # unused in forward; its mode must survive the metric
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not self.training and not torch.is_grad_enabled()
        self.calls += 1
        z = self.a * x[:, 0].mean(dim=(1, 2))
        return torch.stack([z, torch.zeros_like(z)], 1)


def _direct_auc(model: MeanChannel0, image, smap, substrate, mode: str, pps: int) -> float:
    """Plain-Python RISE curve for the two-class model: lists, sorted(), math.exp."""
    h, w = smap.shape
    vals = image[0].flatten().tolist()
    sub = substrate[0].flatten().tolist()
    order = sorted(range(h * w), key=lambda p: -smap.flatten()[p].item())  # stable: ties by index
    n = math.ceil(h * w / pps)
    p0 = 1 / (1 + math.exp(-model.a * sum(vals) / (h * w)))
    tracked0 = p0 > 0.5
    start, finish = (sub, vals) if mode == "ins" else (vals, sub)
    scores = []
    for k in range(n + 1):
        cur = list(start)
        for p in order[: min(k * pps, h * w)]:
            cur[p] = finish[p]
        q = 1 / (1 + math.exp(-model.a * sum(cur) / (h * w)))
        scores.append(q if tracked0 else 1 - q)
    return (sum(scores) - scores[0] / 2 - scores[-1] / 2) / n


@pytest.mark.parametrize("device", DEVICES)
def test_insertion_deletion_closed_form(device):
    b, h, w = 3, 7, 9
    images = torch.randn(b, 3, h, w, dtype=torch.float64)
    images[1, 0] -= 1.5  # predicted class 1 for this one
    maps = torch.rand(b, h, w, dtype=torch.float64)
    maps[2] = torch.randint(0, 3, (h, w)).double()  # many ties: stable order
    model = MeanChannel0(a=4.0)
    model.train()
    model.bn.eval()
    imgs, smaps = images.to(device), maps.to(device)
    for pps in (5, 8, 63):
        ins = insertion_auc(model, imgs, smaps, pixels_per_step=pps, batch_size=7)
        dele = deletion_auc(model, imgs, smaps, pixels_per_step=pps, batch_size=1000)
        blurred = blur(images)
        for i in range(b):
            want_ins = _direct_auc(model, images[i], maps[i], blurred[i], "ins", pps)
            want_del = _direct_auc(model, images[i], maps[i], torch.zeros_like(images[i]), "del", pps)
            assert ins[i].item() == pytest.approx(want_ins, abs=1e-12)
            assert dele[i].item() == pytest.approx(want_del, abs=1e-12)
    assert model.training and not model.bn.training  # each module's mode restored
    assert ins.device.type == device and ins.dtype == torch.float64


def test_causal_curve_chunking_substrates_and_endpoints():
    b, h, w = 2, 6, 5
    images = torch.randn(b, 3, h, w)
    maps = torch.rand(b, h, w)
    model = MeanChannel0(a=2.0).eval()
    curves = [causal_curve(model, images, maps, "ins", steps=4, substrate="zeros", batch_size=bs) for bs in (1, 3, 100)]
    for c in curves[1:]:
        torch.testing.assert_close(c, curves[0], atol=1e-6, rtol=0)
    assert curves[0].shape == (b, 5)  # steps=4 -> ceil(30/4)=8 px/step -> 4 steps
    with torch.no_grad():
        full = model(images).softmax(1).amax(1)
    torch.testing.assert_close(curves[0][:, -1], full)  # all pixels inserted = original image
    const = torch.full((1, 3, 1, 1), 0.25)
    a = causal_curve(model, images, maps, "del", steps=3, substrate=const)
    c = causal_curve(model, images, maps, "del", steps=3, substrate=lambda x: torch.full_like(x, 0.25))
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(a[:, 0], full)
    with pytest.raises(ValueError, match="substrate"):
        insertion_auc(model, images, maps, substrate="noise")
    with pytest.raises(ValueError, match="maps"):
        insertion_auc(model, images, maps[:, :-1])
    with pytest.raises(ValueError, match="steps"):
        insertion_auc(model, images, maps, steps=3, pixels_per_step=2)


def test_defaults_match_research_script_and_auc_formula():
    assert _pixels_per_step(224 * 224, None, None) == 224 * 8
    assert math.ceil(224 * 224 / (224 * 8)) == 28
    s = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.2, 0.2, 0.2, 0.2]])
    torch.testing.assert_close(curve_auc(s), torch.tensor([(3 - 0.5) / 3, 0.2]))


def test_blur_kernel_is_scipy_gaussian_filter_of_a_delta():
    ndimage = pytest.importorskip("scipy.ndimage")
    import numpy as np

    d = np.zeros((11, 11))
    d[5, 5] = 1.0
    k = ndimage.gaussian_filter(d, 5)
    torch.testing.assert_close(blur_kernel(), torch.from_numpy(k), atol=1e-15, rtol=0)
    x = torch.randn(2, 3, 13, 12, dtype=torch.float64)
    want = np.stack([[ndimage.correlate(x[i, c].numpy(), k, mode="constant") for c in range(3)] for i in range(2)])
    torch.testing.assert_close(blur(x), torch.from_numpy(want), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------- readers


def test_read_voc_boxes(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(
        "<annotation><size><width>500</width><height>375</height><depth>3</depth></size>"
        "<object><name>n01</name><difficult>0</difficult>"
        "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>"
        "<object><name>n02</name><difficult>0</difficult>"
        "<bndbox><xmin>5</xmin><ymin>6</ymin><xmax>7</xmax><ymax>8</ymax></bndbox></object>"
        "<object><name>n01</name><difficult>1</difficult>"
        "<bndbox><xmin>100</xmin><ymin>50</ymin><xmax>200</xmax><ymax>60</ymax></bndbox></object>"
        "</annotation>"
    )
    boxes, names, size = read_voc_boxes(p)
    assert size == (500, 375) and names == ["n01", "n02", "n01"]
    assert boxes.tolist() == [[0, 1, 10, 20], [4, 5, 7, 8], [99, 49, 200, 60]]
    boxes, names, _ = read_voc_boxes(p, "n01")
    assert names == ["n01", "n01"] and boxes.shape == (2, 4)
    boxes, names, _ = read_voc_boxes(p, "n01", skip_difficult=True)
    assert boxes.tolist() == [[0, 1, 10, 20]]
    assert read_voc_boxes(p, "n99")[0].shape == (0, 4)
    # research mask: rows ymin-1..ymax-1, cols xmin-1..xmax-1 inclusive
    m = box_mask([read_voc_boxes(p, "n02")[0]], 375, 500)[0]
    want = torch.zeros(375, 500, dtype=torch.bool)
    want[6 - 1 : 8, 5 - 1 : 7] = True
    assert torch.equal(m, want)


def test_read_cub_boxes(tmp_path):
    p = tmp_path / "bounding_boxes.txt"
    p.write_text("1 60.0 27.0 325.0 304.0\n2 139.5 30.0 153.0 264.0\n\n")
    out = read_cub_boxes(p)
    assert sorted(out) == [1, 2]
    assert out[1].tolist() == [[60, 27, 385, 331]]
    assert out[2].tolist() == [[139.5, 30, 292.5, 294]]
    p.write_text("1 60.0 27.0\n")
    with pytest.raises(ValueError, match="bounding_boxes.txt:1"):
        read_cub_boxes(p)


def test_synthetic_boxes_pass_through_and_cover_the_object():
    from sgc_fast.data import SyntheticShapes

    ds = SyntheticShapes("val", size=48, length=4)
    for i in range(4):
        boxes = synthetic_boxes(ds, i)
        assert torch.equal(boxes, ds.boxes(i))
        obj = torch.from_numpy(ds.object_mask(i)).float()[None]
        assert content_heatmap(obj, [boxes]).item() == pytest.approx(1.0)


def test_non_contiguous_and_expanded_inputs():
    maps = torch.rand(3, 11, 9)
    boxes = [[[1, 2, 5, 7]], [[0, 0, 3, 9]], [[3, 3, 4, 4]]]
    t = maps.transpose(1, 2)  # [3, 9, 11], non-contiguous
    tb = [[[b[1], b[0], b[3], b[2]] for b in bs] for bs in boxes]
    torch.testing.assert_close(content_heatmap(t, tb), content_heatmap(maps, boxes))
    assert torch.equal(pointing_game(t, tb, tolerance=2), pointing_game(t.contiguous(), tb, tolerance=2))
    images = torch.randn(1, 3, 6, 5).expand(2, 3, 6, 5)
    smaps = torch.rand(1, 6, 5).expand(2, 6, 5)
    auc = insertion_auc(MeanChannel0(a=3.0), images, smaps, steps=5)
    assert auc[0].item() == auc[1].item()
