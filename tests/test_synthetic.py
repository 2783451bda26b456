"""SyntheticShapes: determinism, geometry of boxes and masks, the background-hue cue, ImageFolder export."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from sgc_fast.data import SHAPES, SyntheticShapes, write_imagefolder


def _pixels(ds: SyntheticShapes, i: int) -> np.ndarray:
    return np.asarray(ds[i][0])


def _same_item(a: SyntheticShapes, i: int, b: SyntheticShapes, j: int) -> bool:
    return (
        np.array_equal(_pixels(a, i), _pixels(b, j))
        and a[i][1] == b[j][1]
        and a.cue(i) == b.cue(j)
        and torch.equal(a.boxes(i), b.boxes(j))
        and np.array_equal(a.object_mask(i), b.object_mask(j))
    )


def test_deterministic_across_calls_orders_and_instances():
    kwargs = dict(split="train", size=40, length=12, bias=0.5, seed=3)
    a = SyntheticShapes(**kwargs)
    first = [_pixels(a, i).copy() for i in range(len(a))]
    b = SyntheticShapes(**kwargs)
    for i in reversed(range(len(b))):  # another instance, reverse order, cold cache
        assert _same_item(a, i, b, i)
        assert np.array_equal(first[i], _pixels(b, i))
    c = pickle.loads(pickle.dumps(SyntheticShapes(**kwargs)))  # as a DataLoader worker gets it
    for i in (7, 2, 11, 0):
        assert _same_item(a, i, c, i)
    assert np.array_equal(_pixels(a, -1), first[-1])


def test_splits_and_seeds_differ():
    items = {
        (split, seed): _pixels(SyntheticShapes(split, size=32, length=4, seed=seed), 0)
        for split in ("train", "val", "test")
        for seed in (0, 1)
    }
    keys = list(items)
    for n, k in enumerate(keys):
        for other in keys[n + 1:]:
            assert not np.array_equal(items[k], items[other]), (k, other)


@pytest.mark.parametrize("size", [32, 45, 64])
def test_image_size_mode_and_labels(size):
    ds = SyntheticShapes("val", size=size, length=10, num_classes=4)
    assert len(ds) == 10 and len(ds.classes) == 4 and ds.classes == sorted(ds.classes)
    assert set(ds.classes) == set(SHAPES[:4])
    for i in range(len(ds)):
        image, label = ds[i]
        assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (size, size)
        assert label == i % 4 == ds.targets[i]
        mask = ds.object_mask(i)
        assert mask.shape == (size, size) and mask.dtype == np.bool_
    ids = {ds.image_id(i) for i in range(len(ds))}
    assert len(ids) == len(ds) and ds.image_id(3) == f"synthetic/val/0/{size}/3"


def test_default_lengths():
    assert [len(SyntheticShapes(s)) for s in ("train", "val", "test")] == [2000, 500, 500]


@pytest.mark.parametrize("size", [32, 57])
def test_boxes_inside_image_and_cover_the_mask(size):
    ds = SyntheticShapes("train", size=size, length=40, num_classes=8, seed=5)
    n_boxes = []
    for i in range(len(ds)):
        boxes, mask = ds.boxes(i), ds.object_mask(i)
        assert boxes.dtype == torch.float32 and boxes.dim() == 2 and boxes.shape[1] == 4 and len(boxes) >= 1
        assert mask.any()
        x0, y0, x1, y1 = boxes.unbind(1)
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= size).all() and (y1 <= size).all()
        assert (x0 < x1).all() and (y0 < y1).all()
        covered = np.zeros_like(mask)
        for bx0, by0, bx1, by1 in boxes.int().tolist():
            covered[by0:by1, bx0:bx1] = True
            # tight: every edge of the box touches the mask
            assert mask[by0, bx0:bx1].any() and mask[by1 - 1, bx0:bx1].any()
            assert mask[by0:by1, bx0].any() and mask[by0:by1, bx1 - 1].any()
            # object diameter 25-60 % of the image (the box of a rotated shape is at least half of it)
            assert max(bx1 - bx0, by1 - by0) <= 0.6 * size + 2
            assert max(bx1 - bx0, by1 - by0) >= 0.125 * size
        assert not (mask & ~covered).any()
        n_boxes.append(len(boxes))
    assert 1 in n_boxes and 2 in n_boxes


def test_layout_is_independent_of_size():
    small, large = SyntheticShapes("test", size=32, length=6), SyntheticShapes("test", size=64, length=6)
    for i in range(6):
        assert small.cue(i) == large.cue(i) and small[i][1] == large[i][1]
        assert torch.allclose(2 * small.boxes(i), large.boxes(i), atol=3)


def test_bias_one_makes_the_train_cue_the_label():
    ds = SyntheticShapes("train", size=32, length=300, bias=1.0, seed=2)
    assert all(ds.cue(i) == ds[i][1] for i in range(len(ds)))


@pytest.mark.parametrize("split,bias", [("val", 1.0), ("test", 1.0), ("train", 0.0)])
def test_unbiased_cue_is_independent_of_the_label(split, bias):
    ds = SyntheticShapes(split, size=32, length=300, bias=bias, seed=2)
    cues = np.array([ds.cue(i) for i in range(len(ds))])
    labels = np.array(ds.targets)
    agreement = (cues == labels).mean()  # expected 1/5, binomial sd ~0.023
    assert 0.1 < agreement < 0.3, agreement
    counts = np.bincount(cues, minlength=5)
    assert counts.min() > 30, counts  # every hue is used (expected 60 each)


def test_bias_changes_only_the_cue():
    biased = SyntheticShapes("train", size=32, length=30, bias=1.0, seed=4)
    plain = SyntheticShapes("train", size=32, length=30, bias=0.0, seed=4)
    same_cue = [i for i in range(30) if biased.cue(i) == plain.cue(i)]
    assert 0 < len(same_cue) < 30
    for i in range(30):
        assert torch.equal(biased.boxes(i), plain.boxes(i))
        assert np.array_equal(_pixels(biased, i), _pixels(plain, i)) == (i in same_cue)


def test_cue_is_the_background_hue():
    """The mean hue of background pixels identifies the cue: a shortcut a classifier can learn."""
    ds = SyntheticShapes("val", size=32, length=60, seed=1)
    for i in range(len(ds)):
        hsv = np.asarray(ds[i][0].convert("HSV"), dtype=np.float64)
        background = ~ds.object_mask(i)
        angle = hsv[..., 0][background] / 256 * 2 * np.pi
        mean = np.angle(np.exp(1j * angle).mean()) / (2 * np.pi) % 1
        nearest = round(mean * ds.num_classes) % ds.num_classes
        assert nearest == ds.cue(i), (i, mean)


def _shape_features(mask: np.ndarray, box: list[int]) -> np.ndarray:
    """Rotation-invariant statistics of one object: fill of its box, and radial mass profile."""
    x0, y0, x1, y1 = box
    crop = mask[y0:y1, x0:x1]
    ys, xs = np.nonzero(crop)
    cy, cx = ys.mean(), xs.mean()
    dist = np.hypot(ys - cy, xs - cx)
    dist = dist / dist.max()
    profile = np.histogram(dist, bins=8, range=(0, 1))[0] / len(dist)
    return np.concatenate([[crop.mean()], profile])


def test_classes_are_distinguishable_by_shape():
    """Nearest-centroid on mask shape statistics separates the classes (fixed seeds; cheap)."""
    def features(split: str, n: int):
        ds = SyntheticShapes(split, size=48, length=n, num_classes=8, seed=0)
        x = np.stack([_shape_features(ds.object_mask(i), ds.boxes(i)[0].int().tolist()) for i in range(n)])
        return x, np.array(ds.targets)

    x_train, y_train = features("train", 240)
    x_test, y_test = features("test", 120)
    centroids = np.stack([x_train[y_train == c].mean(0) for c in range(8)])
    predicted = np.linalg.norm(x_test[:, None] - centroids[None], axis=-1).argmin(1)
    accuracy = (predicted == y_test).mean()
    assert accuracy > 0.6, accuracy  # chance is 1/8


def test_write_imagefolder_round_trip(tmp_path):
    ds = SyntheticShapes("val", size=32, length=12, num_classes=3, seed=7)
    split_dir = write_imagefolder(tmp_path, "val", size=32, length=12, num_classes=3, seed=7)
    assert split_dir == tmp_path / "val"
    assert sorted(p.name for p in split_dir.iterdir() if p.is_dir()) == ds.classes
    boxes = json.loads((split_dir / "boxes.json").read_text())
    meta = json.loads((split_dir / "meta.json").read_text())
    assert len(boxes) == 12 and meta["classes"] == ds.classes
    for i in range(len(ds)):
        image, label = ds[i]
        rel = f"{ds.classes[label]}/{i:06d}.png"
        assert np.array_equal(np.asarray(Image.open(split_dir / rel)), np.asarray(image))
        mask = np.asarray(Image.open(tmp_path / "object_masks" / "val" / rel)) > 127
        assert np.array_equal(mask, ds.object_mask(i))
        assert torch.equal(torch.tensor(boxes[rel]), ds.boxes(i))
        assert meta["cue"][rel] == ds.cue(i)

    datasets = pytest.importorskip("torchvision.datasets")
    folder = datasets.ImageFolder(str(split_dir))
    assert folder.classes == ds.classes
    assert [folder.targets[k] for k in range(len(folder))] == [
        ds.classes.index(p.split("/")[-2]) for p, _ in folder.samples
    ]
    by_name = {p.split("/")[-1]: t for p, t in folder.samples}
    assert all(by_name[f"{i:06d}.png"] == ds.targets[i] for i in range(len(ds)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(split="dev"), "split"),
        (dict(size=8), "size"),
        (dict(num_classes=9), "num_classes"),
        (dict(bias=1.5), "bias"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticShapes(**kwargs)


def test_index_out_of_range():
    ds = SyntheticShapes("test", size=32, length=3)
    with pytest.raises(IndexError):
        ds[3]
    assert [label for _, label in ds] == [0, 1, 2]  # the sequence protocol stops at IndexError
