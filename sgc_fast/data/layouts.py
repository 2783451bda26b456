"""The five data sets of the SGC paper in the layouts they ship in, read without converting anything.

:func:`open_split` ``(name, root, split)`` returns an :class:`ImageList` (items ``(PIL RGB image, class)``,
``classes``, ``image_id(i)``, and ``boxes(i)`` where the data set has boxes). ``split`` is ``"train"`` or
``"test"`` (``"val"`` is the same: the split the research code validates on).

====================  ========================================================================================
``cub``               CUB-200-2011: ``images/``, ``images.txt``, ``image_class_labels.txt``,
                      ``train_test_split.txt``, ``bounding_boxes.txt`` (``classes.txt`` for the names).
                      5,994 train / 5,794 test, 200 classes, one box per image.
``aircraft``          FGVC-Aircraft 2013b: ``data/images/``, ``data/images_variant_{trainval,test}.txt``,
                      ``data/variants.txt``, ``data/images_box.txt``; variant level (100 classes),
                      trainval (6,667) vs test (3,333). Alias ``fgvc`` (the research code's name).
``cars``              Stanford Cars: ``devkit/cars_{train,test}_annos.mat`` (test labels from
                      ``cars_test_annos_withlabels.mat``), ``devkit/cars_meta.mat``, ``cars_{train,test}/``;
                      196 classes, 8,144 / 8,041, one box per image. A ``train/``, ``test/`` (or ``val/``)
                      ImageFolder re-packaging is read as such.
``flowers``           Oxford Flowers-102: ``jpg/``, ``imagelabels.mat``, ``setid.mat``; train + val
                      (2,040) for training and test (6,149), as the research code; classes ``001`` .. ``102``.
``imagenet``          ImageNet-100: an ImageNet folder (``train/<wnid>/``; ``val/<wnid>/`` or a flat ``val/``
                      labelled by its Pascal-VOC XMLs in ``annotation/`` or ``LOC_val_solution.csv``) restricted
                      to a class list: the shipped CMC list (:data:`IMAGENET100`) or ``class_list=``.
====================  ========================================================================================

``.mat`` files are read with SciPy (an optional dependency: ``pip install scipy``). Boxes are ``[n, 4]`` float32
``(xmin, ymin, xmax, ymax)`` in pixels of the original image, max exclusive (:mod:`sgc_fast.metrics`): the
1-based inclusive boxes of Aircraft, Cars and the VOC XMLs are shifted accordingly, CUB's ``x y width height``
become ``(x, y, x + width, y + height)``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .folder import ImageFolder, ImageList

__all__ = ["LAYOUTS", "ALIASES", "IMAGENET100", "ImageList", "open_split", "open_dataset", "imagenet100_classes", "read_mat"]

LAYOUTS = ("cub", "aircraft", "cars", "flowers", "imagenet")
ALIASES = {"fgvc": "aircraft"}
EVAL_SPLITS = ("test", "val")
_HERE = Path(__file__).resolve().parent
#: The ImageNet-100 classes of CMC (Tian, Krishnan, Isola 2019; github.com/HobbitLong/CMC, imagenet100.txt), the
#: list most ImageNet-100 work uses. The SGC repository does not publish its own list.
IMAGENET100 = _HERE / "imagenet100.txt"


def from_listing(listing: dict):
    """An :class:`ImageList` or :class:`~sgc_fast.data.folder.ImageFolder` from its ``listing()``."""
    return (ImageFolder if listing.get("kind") == ImageFolder.KIND else ImageList).from_listing(listing)


# ---------------------------------------------------------------------------------------------------- helpers


def read_mat(path: Path) -> dict:
    """``scipy.io.loadmat`` with a clear error when SciPy or the file is missing."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError(f"reading {path.name} needs SciPy (pip install scipy, or pip install sgc_fast[datasets])"
                          ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return loadmat(str(path), squeeze_me=True, struct_as_record=False)


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} not found")
    return path


def _table(path: Path, what: str, columns: int) -> list[list[str]]:
    """Whitespace-separated rows of an index file; the last column keeps its spaces when ``columns`` is less."""
    rows = []
    with open(_need(path, what), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=columns - 1)
            if len(parts) != columns:
                raise ValueError(f"{what}: {path} line {n}: expected {columns} fields, got {line!r}")
            rows.append(parts)
    return rows


def _split_kind(split: str) -> str:
    if split == "train":
        return "train"
    if split in EVAL_SPLITS:
        return "test"
    raise ValueError(f"split: expected 'train', 'test' or 'val', got {split!r}")


# ---------------------------------------------------------------------------------------------------- readers


def _cub(root: Path, split: str, check: str) -> ImageList:
    if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
        root = root / "CUB_200_2011"
    what = "cub"
    images = {i: p for i, p in _table(root / "images.txt", what, 2)}
    labels = {i: int(c) - 1 for i, c in _table(root / "image_class_labels.txt", what, 2)}
    is_train = {i: t == "1" for i, t in _table(root / "train_test_split.txt", what, 2)}
    boxes = {i: tuple(float(v) for v in rest.split()) for i, rest in _table(root / "bounding_boxes.txt", what, 2)}
    if (root / "classes.txt").is_file():
        classes = [name for _, name in sorted(_table(root / "classes.txt", what, 2), key=lambda r: int(r[0]))]
    else:
        classes = sorted({Path(p).parts[0] for p in images.values()})
    want = _split_kind(split) == "train"
    samples, bxs = [], []
    for i in sorted(images, key=int):
        if i not in labels or i not in is_train:
            raise ValueError(f"{what}: image id {i} of images.txt has no label or split")
        if is_train[i] != want:
            continue
        samples.append((root / "images" / images[i], labels[i]))
        x, y, w, h = boxes[i]
        bxs.append([x, y, x + w, y + h])
    return ImageList(root / "images", samples, classes, bxs, check=check, name=f"cub {split}")


def _aircraft(root: Path, split: str, check: str) -> ImageList:
    if not (root / "data").is_dir() and (root / "fgvc-aircraft-2013b" / "data").is_dir():
        root = root / "fgvc-aircraft-2013b"
    data = root / "data"
    what = "aircraft"
    name = "trainval" if _split_kind(split) == "train" else "test"
    rows = _table(data / f"images_variant_{name}.txt", what, 2)
    if (data / "variants.txt").is_file():
        with open(data / "variants.txt", encoding="utf-8") as f:
            classes = [line.strip() for line in f if line.strip()]
    else:
        classes = sorted({v for _, v in rows})
    index = {c: k for k, c in enumerate(classes)}
    box_file = data / "images_box.txt"
    table = {i: [float(v) for v in rest.split()] for i, rest in _table(box_file, what, 2)} if box_file.is_file() else None
    samples, bxs = [], []
    for image, variant in rows:
        if variant not in index:
            raise ValueError(f"{what}: variant {variant!r} of image {image} is not in variants.txt")
        samples.append((data / "images" / f"{image}.jpg", index[variant]))
        if table is not None:
            x0, y0, x1, y1 = table[image]
            bxs.append([x0 - 1, y0 - 1, x1, y1])  # 1-based inclusive -> max exclusive
    return ImageList(data / "images", samples, classes, bxs if table is not None else None, check=check,
                     name=f"aircraft {split}")


def _cars(root: Path, split: str, check: str):
    kind = _split_kind(split)
    if (root / "train").is_dir():  # the ImageFolder re-packaging (train/, test/ or val/)
        sub = "train" if kind == "train" else next((s for s in ("test", "val") if (root / s).is_dir()), "test")
        train_classes = ImageFolder(root, "train", check="none").classes if kind != "train" else None
        return ImageFolder(root, sub, check=check, classes=train_classes)
    devkit = root / "devkit"
    meta = read_mat(_need(devkit / "cars_meta.mat", "cars"))
    classes = [str(c) for c in meta["class_names"]]
    if kind == "train":
        annos, folder = read_mat(devkit / "cars_train_annos.mat")["annotations"], root / "cars_train"
    else:
        labelled = next((p for p in (root / "cars_test_annos_withlabels.mat",
                                     devkit / "cars_test_annos_withlabels.mat") if p.is_file()), None)
        if labelled is None:
            raise FileNotFoundError(f"cars: the test labels cars_test_annos_withlabels.mat are not in {root} or "
                                    f"{devkit} (devkit/cars_test_annos.mat has no classes)")
        annos, folder = read_mat(labelled)["annotations"], root / "cars_test"
    samples, bxs = [], []
    for a in list(annos) if hasattr(annos, "__len__") else [annos]:
        samples.append((folder / str(a.fname), int(getattr(a, "class")) - 1))
        bxs.append([float(a.bbox_x1) - 1, float(a.bbox_y1) - 1, float(a.bbox_x2), float(a.bbox_y2)])
    return ImageList(folder, samples, classes, bxs, check=check, name=f"cars {split}")


def _flowers(root: Path, split: str, check: str) -> ImageList:
    labels = read_mat(root / "imagelabels.mat")["labels"]
    setid = read_mat(root / "setid.mat")
    ids = (list(setid["trnid"]) + list(setid["valid"])) if _split_kind(split) == "train" else list(setid["tstid"])
    classes = [f"{c:03d}" for c in range(1, 103)]
    samples = [(root / "jpg" / f"image_{int(i):05d}.jpg", int(labels[int(i) - 1]) - 1) for i in sorted(ids)]
    return ImageList(root / "jpg", samples, classes, None, check=check, name=f"flowers {split}")


def imagenet100_classes(class_list: str | os.PathLike | Sequence[str] | None = None) -> list[str]:
    """The wnids of ``class_list`` (a file with one per line, ``#`` comments allowed, or a list), the shipped CMC
    list by default; sorted, as ``ImageFolder`` orders class folders."""
    if isinstance(class_list, list | tuple):
        wnids, path = [str(w) for w in class_list], "class_list"
    else:
        path = Path(class_list) if class_list is not None else IMAGENET100
        with open(_need(path, "--class-list"), encoding="utf-8") as f:
            wnids = [line.split("#")[0].strip() for line in f]
    wnids = [w for w in wnids if w]
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"--class-list: {path} lists a class twice")
    if not wnids:
        raise ValueError(f"--class-list: {path} lists no class")
    return sorted(wnids)


def _voc_object(xml: Path) -> tuple[str, list]:
    from ..metrics import read_voc_boxes

    boxes, names, _ = read_voc_boxes(xml)
    if not names:
        raise ValueError(f"imagenet: {xml} has no object")
    keep = [k for k, n in enumerate(names) if n == names[0]]
    return names[0], boxes[keep].tolist()


def _imagenet(root: Path, split: str, check: str, class_list=None, annotations=None):
    classes = imagenet100_classes(class_list)
    if _split_kind(split) == "train":
        missing = [c for c in classes if not (root / "train" / c).is_dir()]
        if missing:
            raise FileNotFoundError(f"imagenet: {root / 'train'} lacks {len(missing)} class folders of the class "
                                    f"list, e.g. {missing[:3]}")
        return ImageFolder(root, "train", check=check, classes=classes)
    val = root / "val"
    ann = Path(annotations) if annotations is not None else root / "annotation"
    if all((val / c).is_dir() for c in classes) and not ann.is_dir():
        return ImageFolder(root, "val", check=check, classes=classes)
    index = {c: k for k, c in enumerate(classes)}
    files = sorted(p for p in _need(val, "imagenet").iterdir() if p.is_file())
    samples, bxs = [], []
    if ann.is_dir():  # flat val/ + Pascal-VOC XMLs (the research evaluation's layout): label = first object
        for p in files:
            xml = ann / (p.stem + ".xml")
            if not xml.is_file():
                continue
            wnid, boxes = _voc_object(xml)
            if wnid in index:
                samples.append((p, index[wnid]))
                bxs.append(boxes)
        return ImageList(val, samples, classes, bxs, check=check, name=f"imagenet {split}")
    solution = next((q for q in (root / "LOC_val_solution.csv", root.parent / "LOC_val_solution.csv") if q.is_file()),
                    None)
    if solution is None:
        raise FileNotFoundError(f"imagenet: {val} is flat and neither {ann} (VOC XMLs) nor LOC_val_solution.csv "
                                f"labels it; pass --annotations DIR")
    with open(solution, encoding="utf-8") as f:
        label = {}
        for row in csv.DictReader(f):
            words = row["PredictionString"].split()
            label[row["ImageId"]] = (words[0], [[float(v) for v in words[k + 1:k + 5]] for k in range(0, len(words), 5)
                                                if words[k] == words[0]])
    for p in files:
        if p.stem in label and label[p.stem][0] in index:
            samples.append((p, index[label[p.stem][0]]))
            bxs.append(label[p.stem][1])
    return ImageList(val, samples, classes, bxs, check=check, name=f"imagenet {split}")


_READERS: dict[str, Callable] = {"cub": _cub, "aircraft": _aircraft, "cars": _cars, "flowers": _flowers}


def open_split(name: str, root: str | os.PathLike, split: str, *, check: str = "header", class_list=None,
               annotations=None):
    """The ``split`` (``train``, or ``test``/``val``) of data set ``name`` (:data:`LAYOUTS`, or ``fgvc``) under
    ``root`` in its native layout."""
    name = ALIASES.get(name, name)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data: {root} is not a directory")
    if name == "imagenet":
        return _imagenet(root, split, check, class_list, annotations)
    if name not in _READERS:
        raise ValueError(f"dataset: expected one of {LAYOUTS} (or fgvc), got {name!r}")
    return _READERS[name](root, split, check)


def open_dataset(dataset: str, data, class_list=None, check: str = "header"):
    """(train, validation, description) of ``--dataset`` under ``data``: an ImageFolder layout (``train/`` and
    ``val/``, or ``test/`` for CUB) when ``<data>/train/`` exists (ImageNet: restricted to the class list), else the
    data set's native layout (:mod:`sgc_fast.data.layouts`)."""
    root = Path(data)
    name = ALIASES.get(dataset, dataset)
    if name == "folder" or ((root / "train").is_dir() and name != "imagenet"):
        val_split = "val"
        if name == "cub" and not (root / "val").is_dir() and (root / "test").is_dir():
            val_split = "test"  # CUB is often laid out with test/ (the CGC scripts use it)
        train = ImageFolder(root, "train", check=check)
        val = ImageFolder(root, val_split, classes=train.classes, check=check)
        return train, val, f"{dataset} from {root} (train/, {val_split}/)"
    if name == "imagenet" and (root / "train").is_dir() and class_list is None:
        found = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
        if found == imagenet100_classes():
            pass  # an ImageNet-100 folder of the shipped list
        elif len(found) == 100:
            class_list = found  # a prepared 100-class folder: its own classes
    train = open_split(name, root, "train", class_list=class_list, check=check)
    val = open_split(name, root, "test", class_list=class_list, check=check)
    return train, val, f"{dataset} from {root} (native layout, train / test)"
