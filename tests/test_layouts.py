"""The native layouts of the five data sets, on miniature copies (a few generated images, the index files, small
.mat files written with SciPy): classes, splits, boxes, counts; and sgc-train reading them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sgc_fast.data.layouts import ImageList, from_listing, imagenet100_classes, open_split
from sgc_fast.train.cli import main as train_main

scipy_io = pytest.importorskip("scipy.io")


def _img(path, w=40, h=30, color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color).save(path)


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------ CUB


@pytest.fixture
def cub(tmp_path):
    root = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split, boxes = [], [], [], []
    k = 0
    for c, name in enumerate(classes):
        for j in range(4):
            k += 1
            rel = f"{name}/{name.split('.')[1]}_{j}.jpg"
            _img(root / "images" / rel)
            images.append(f"{k} {rel}")
            labels.append(f"{k} {c + 1}")
            split.append(f"{k} {1 if j < 3 else 0}")
            boxes.append(f"{k} {2.0 + j} 3.0 10.5 12.0")
    _write(root / "images.txt", images)
    _write(root / "image_class_labels.txt", labels)
    _write(root / "train_test_split.txt", split)
    _write(root / "bounding_boxes.txt", boxes)
    _write(root / "classes.txt", [f"{i + 1} {c}" for i, c in enumerate(classes)])
    return tmp_path, classes


def test_cub_splits_classes_boxes(cub):
    parent, classes = cub
    train = open_split("cub", parent, "train")  # the folder above CUB_200_2011 is accepted too
    test = open_split("cub", parent / "CUB_200_2011", "test")
    assert train.classes == test.classes == classes
    assert len(train) == 9 and len(test) == 3
    assert [t for _, t in test.samples] == [0, 1, 2]
    assert train.image_id(0) == "001.Black_footed_Albatross/Black_footed_Albatross_0.jpg"
    # x y width height -> (x, y, x + w, y + h)
    torch.testing.assert_close(train.boxes(1), torch.tensor([[3.0, 3.0, 13.5, 15.0]]))
    img, target = test[2]
    assert img.size == (40, 30) and target == 2
    assert open_split("cub", parent, "val").samples == test.samples  # val = the research validation split


def test_cub_missing_index_file_is_named(cub):
    parent, _ = cub
    (parent / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="bounding_boxes.txt"):
        open_split("cub", parent, "train")


# ------------------------------------------------------------------------------------------------ Aircraft


@pytest.fixture
def aircraft(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "Cessna 172"]  # a variant name with a space
    trainval, test, boxes = [], [], []
    for c, v in enumerate(variants):
        for j in range(3):
            image = f"{100000 + 10 * c + j}"
            _img(data / "images" / f"{image}.jpg")
            (trainval if j < 2 else test).append(f"{image} {v}")
            boxes.append(f"{image} 1 2 40 30")
    _write(data / "variants.txt", variants)
    _write(data / "images_variant_trainval.txt", trainval)
    _write(data / "images_variant_test.txt", test)
    _write(data / "images_box.txt", boxes)
    return tmp_path, variants


def test_aircraft_variant_level_trainval_vs_test(aircraft):
    root, variants = aircraft
    train = open_split("aircraft", root, "train")
    test = open_split("fgvc", root, "test")  # the research code's name
    assert train.classes == variants and len(train) == 6 and len(test) == 3
    assert [t for _, t in test.samples] == [0, 1, 2]
    torch.testing.assert_close(train.boxes(0), torch.tensor([[0.0, 1.0, 40.0, 30.0]]))  # 1-based inclusive


# ------------------------------------------------------------------------------------------------ Cars


def _annos(entries):
    dt = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    arr = np.zeros((1, len(entries)), dtype=dt)
    for k, e in enumerate(entries):
        for name, value in zip(("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"), e, strict=True):
            arr[0, k][name] = value
    return {"annotations": arr}


@pytest.fixture
def cars(tmp_path):
    root = tmp_path / "cars"
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    (root / "devkit").mkdir(parents=True)
    scipy_io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array([classes], dtype=object)})
    train, test = [], []
    for k in range(4):
        _img(root / "cars_train" / f"{k + 1:05d}.jpg")
        train.append((5, 6, 30, 20, k % 2 + 1, f"{k + 1:05d}.jpg"))
    for k in range(3):
        _img(root / "cars_test" / f"{k + 1:05d}.jpg")
        test.append((1, 1, 40, 30, 2 - k % 2, f"{k + 1:05d}.jpg"))
    scipy_io.savemat(root / "devkit" / "cars_train_annos.mat", _annos(train))
    scipy_io.savemat(root / "cars_test_annos_withlabels.mat", _annos(test))
    return root, classes


def test_cars_devkit(cars):
    root, classes = cars
    train, test = open_split("cars", root, "train"), open_split("cars", root, "test")
    assert train.classes == classes and len(train) == 4 and len(test) == 3
    assert [t for _, t in train.samples] == [0, 1, 0, 1] and [t for _, t in test.samples] == [1, 0, 1]
    torch.testing.assert_close(train.boxes(0), torch.tensor([[4.0, 5.0, 30.0, 20.0]]))


def test_cars_test_labels_required(cars):
    root, _ = cars
    (root / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(FileNotFoundError, match="cars_test_annos_withlabels.mat"):
        open_split("cars", root, "test")


def test_cars_imagefolder_repackaging(tmp_path):
    for split in ("train", "test"):
        for c in ("a_car", "b_car"):
            _img(tmp_path / split / c / "x.jpg")
    test = open_split("cars", tmp_path, "test")
    assert test.classes == ["a_car", "b_car"] and len(test) == 2


# ------------------------------------------------------------------------------------------------ Flowers


@pytest.fixture
def flowers(tmp_path):
    n = 12
    for i in range(1, n + 1):
        _img(tmp_path / "jpg" / f"image_{i:05d}.jpg")
    labels = np.array([1 + (i % 3) for i in range(n)])  # classes 1..3 of 102
    scipy_io.savemat(tmp_path / "imagelabels.mat", {"labels": labels[None]})
    scipy_io.savemat(tmp_path / "setid.mat", {"trnid": np.array([[1, 2, 3]]), "valid": np.array([[4, 5, 6]]),
                                              "tstid": np.array([[7, 8, 9, 10, 11, 12]])})
    return tmp_path, labels


def test_flowers_train_plus_val_vs_test(flowers):
    root, labels = flowers
    train, test = open_split("flowers", root, "train"), open_split("flowers", root, "test")
    assert len(train.classes) == 102 and train.classes[0] == "001"
    assert len(train) == 6 and len(test) == 6  # trnid + valid for training, as the research code
    assert [t for _, t in train.samples] == [int(v) - 1 for v in labels[:6]]
    assert test.image_id(0) == "image_00007.jpg"
    assert not test.has_boxes


# ------------------------------------------------------------------------------------------------ ImageNet-100


def _voc(path, wnid, w=40, h=30, box=(2, 3, 20, 25)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><size><width>{w}</width><height>{h}</height></size><object><name>{wnid}</name>"
                    f"<difficult>0</difficult><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax>"
                    f"<ymax>{box[3]}</ymax></bndbox></object></annotation>")


@pytest.fixture
def imagenet(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    for w in [*wnids, "n09999999"]:  # one class outside the list
        for j in range(2):
            _img(tmp_path / "train" / w / f"{w}_{j}.JPEG")
    for k, w in enumerate([*wnids, "n09999999"]):
        stem = f"ILSVRC2012_val_{k + 1:08d}"
        _img(tmp_path / "val" / f"{stem}.JPEG")
        _voc(tmp_path / "annotation" / f"{stem}.xml", w)
    (tmp_path / "classes.txt").write_text("# three classes\n" + "\n".join(reversed(wnids)) + "\n")
    return tmp_path, wnids


def test_imagenet_class_list_and_flat_val_with_xml(imagenet):
    root, wnids = imagenet
    train = open_split("imagenet", root, "train", class_list=root / "classes.txt")
    val = open_split("imagenet", root, "val", class_list=root / "classes.txt")
    assert train.classes == val.classes == wnids  # sorted, as ImageFolder
    assert len(train) == 6 and len(val) == 3  # the class outside the list is left out
    assert [t for _, t in val.samples] == [0, 1, 2]
    torch.testing.assert_close(val.boxes(0), torch.tensor([[1.0, 2.0, 20.0, 25.0]]))  # VOC: 1-based inclusive


def test_imagenet100_list_is_shipped():
    wnids = imagenet100_classes()
    assert len(wnids) == 100 == len(set(wnids)) and all(w.startswith("n") and len(w) == 9 for w in wnids)


def test_listing_round_trip(cub):
    parent, _ = cub
    train = open_split("cub", parent, "train")
    again = from_listing(json.loads(json.dumps(train.listing())))
    assert isinstance(again, ImageList) and again.samples == train.samples and again.classes == train.classes
    assert torch.equal(again.boxes(3), train.boxes(3))


def test_scipy_missing_is_a_clear_error(flowers, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError, match="needs SciPy"):
        open_split("flowers", flowers[0], "train")


def test_sgc_train_reads_a_native_layout(cub, tmp_path, capsys, monkeypatch):
    from sgc_fast.train import cli

    parent, _ = cub
    argv = [str(parent), "--dataset", "cub", "--method", "cgc", "--image-size", "48", "-b", "3", "--epochs", "1", "-j",
            "0", "--no-progress", "--lr", "0.001", "--save_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "lg"),
            "--seed", "0"]
    with pytest.raises(SystemExit, match="--dataset cub expects 200 classes"):
        train_main(argv)
    monkeypatch.setitem(cli.DATASETS, "cub", (None, "val"))  # the miniature has 3 classes
    out = train_main(argv)
    assert out["epoch"] == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert "native layout" in first and "9 train / 3 val images" in first


def test_sgc_eval_reads_native_boxes_with_the_research_eval_size(cub, tmp_path, monkeypatch):
    from sgc_fast.eval.cli import main as eval_main
    from sgc_fast.train import cli

    parent, _ = cub
    monkeypatch.setitem(cli.DATASETS, "cub", (None, "val"))
    train_main([str(parent), "--dataset", "cub", "--method", "cgc", "--image-size", "48", "-b", "3", "--epochs", "1",
                "-j", "0", "--no-progress", "--save_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "lg")])
    out = eval_main([str(parent), "--dataset", "cub", "--checkpoint", str(tmp_path / "ck" / "last.pt"), "-j", "0",
                     "--no-progress", "--no-causal", "--out", str(tmp_path / "r.json"), "-b", "4"])
    assert out["config"]["eval_size"] == 448  # a CGC checkpoint: CGC's tables were evaluated at 448
    row = out["results"][0]
    assert row["images"] == 3 and row["content_heatmap"] is not None  # boxes from bounding_boxes.txt
    assert 1 <= row["ch_images"] <= 3  # (a CAM of zero mass is skipped)


def test_shape_order_groups_equal_input_shapes(tmp_path):
    from sgc_fast.eval.cli import shape_order

    sizes = [(40, 30), (30, 40), (40, 30), (80, 60), (30, 40)]
    samples = []
    for k, (w, h) in enumerate(sizes):
        _img(tmp_path / f"{k}.jpg", w, h)
        samples.append((tmp_path / f"{k}.jpg", 0))
    base = ImageList(tmp_path, samples, ["a"])
    # shorter side to 30: 40x30 and 80x60 both become 40x30 (w x h); 30x40 stays
    assert shape_order(base, range(5), 30) == [0, 2, 3, 1, 4]
    assert shape_order(base, range(5), None) == [0, 2, 1, 4, 3]


def test_sgc_saliency_cache_fits_sgc_train_on_a_native_layout(cub, tmp_path, monkeypatch):
    from sgc_fast.saliency.cli import main as saliency_main
    from sgc_fast.train import cli

    parent, _ = cub
    cache = tmp_path / "m.sgcmask"
    saliency_main([str(parent), "--dataset", "cub", "--provider", "opencv", "--image-size", "48", "--out", str(cache),
                   "-j", "0", "--no-progress"])
    monkeypatch.setitem(cli.DATASETS, "cub", (None, "val"))
    out = train_main([str(parent), "--dataset", "cub", "--saliency", str(cache), "--image-size", "48", "-b", "3",
                      "--epochs", "1", "-j", "0", "--no-progress", "--save_dir", str(tmp_path / "ck"), "--log_dir",
                      str(tmp_path / "lg")])
    assert out["epoch"] == 1
