"""Image lists that skip unreadable images: :class:`ImageList` (any ``(path, class)`` list, the base of the native
layouts in :mod:`sgc_fast.data.layouts`) and :class:`ImageFolder` (``<root>/<split>/<class>/<image>``).

Each candidate file is opened once at construction (``check="header"``: PIL parses the header, cheap;
``check="full"``: ``Image.verify()`` reads the whole file; ``check="none"``: no check). Files that
fail are left out with one warning listing them, and counted in :attr:`num_skipped`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "ImageList"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CHECKS = ("header", "full", "none")
# How many skipped file names the warning spells out.
WARN_LIST = 10


def _readable(path: Path, check: str) -> bool:
    if check == "none":
        return True
    try:
        with Image.open(path) as img:
            if check == "full":
                img.verify()
            else:
                img.size  # noqa: B018 (parsed header)
        return True
    except Exception:  # PIL raises many types for bad files (OSError, SyntaxError, ValueError, ...)
        return False


class ImageList(Dataset):
    """A list of ``(image path, class)`` under ``root`` with class names and, optionally, boxes; items are
    ``(PIL RGB image, class)``.

    Each file is opened once here (``check`` as the module says); files that fail are left out with one warning and
    kept in :attr:`skipped`. ``image_id(i)`` is the path relative to ``root``; ``boxes(i)`` the ``[n, 4]`` boxes of
    item ``i`` when ``boxes`` were given. :meth:`listing` / :meth:`from_listing` hand the result to another process
    without scanning again (under ``torchrun`` rank 0 scans, the other ranks take its list).
    """

    KIND = "list"

    def __init__(self, root: str | os.PathLike, samples: Sequence[tuple[str | os.PathLike, int]], classes: Sequence[str],
                 boxes: Sequence | None = None, check: str = "header", name: str = "") -> None:
        if check not in CHECKS:
            raise ValueError(f"check: expected one of {CHECKS}, got {check!r}")
        self.root, self.classes, self.name = Path(root), list(classes), name
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        self._boxes: list | None = [] if boxes is not None else None
        self.skipped: list[Path] = []
        for k, (path, target) in enumerate(samples):
            path = Path(path)
            if not 0 <= int(target) < len(self.classes):
                raise ValueError(f"{name}: {path} has class index {target}, outside [0, {len(self.classes)})")
            if _readable(path, check):
                self.samples.append((path, int(target)))
                if boxes is not None:
                    self._boxes.append(boxes[k])
            else:
                self.skipped.append(path)
        if self.skipped:
            listed = ", ".join(self._relative(p) for p in self.skipped[:WARN_LIST])
            more = f" and {len(self.skipped) - WARN_LIST} more" if len(self.skipped) > WARN_LIST else ""
            warnings.warn(f"{name or self.root}: skipped {len(self.skipped)} unreadable image(s): {listed}{more}",
                          stacklevel=3)
        if not self.samples:
            raise FileNotFoundError(f"{name or 'data'}: no readable images under {self.root}")

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def has_boxes(self) -> bool:
        return self._boxes is not None

    def __len__(self) -> int:
        return len(self.samples)

    def image_id(self, index: int) -> str:
        return self._relative(self.samples[index][0])

    def boxes(self, index: int) -> torch.Tensor:
        if self._boxes is None:
            raise ValueError(f"{self.name or self.root}: this split has no boxes")
        return torch.as_tensor(self._boxes[index], dtype=torch.float32).reshape(-1, 4)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except Exception as exc:
            raise OSError(f"{path}: cannot be decoded ({exc}); build the dataset with check='full' "
                          f"(--image-check full) to skip it") from exc
        return img, target

    def listing(self) -> dict:
        """What the scan found, for :meth:`from_listing` in another process."""
        return {"kind": self.KIND, "root": str(self.root), "classes": self.classes, "name": self.name,
                "samples": [(str(p), t) for p, t in self.samples], "skipped": [str(p) for p in self.skipped],
                "boxes": [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4).tolist() for b in self._boxes]
                if self._boxes is not None else None}

    @classmethod
    def from_listing(cls, listing: dict):
        self = cls.__new__(cls)
        self.root, self.classes, self.name = Path(listing["root"]), list(listing["classes"]), listing.get("name", "")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(Path(p), int(t)) for p, t in listing["samples"]]
        self.skipped = [Path(p) for p in listing["skipped"]]
        self._boxes = listing.get("boxes")
        return self


class ImageFolder(ImageList):
    """``<root>/<split>/<class>/*``, classes sorted by folder name; items are ``(PIL RGB image, class)``.

    Attributes: ``classes`` (folder names), ``samples`` (``(path, class)`` list), ``skipped`` (paths of
    unreadable files), ``num_skipped``. ``image_id(i)`` is the path relative to ``<root>/<split>``.
    """

    KIND = "folder"

    def __init__(self, root: str | os.PathLike, split: str = "train", check: str = "header",
                 classes: list[str] | None = None) -> None:
        if check not in CHECKS:
            raise ValueError(f"check: expected one of {CHECKS}, got {check!r}")
        folder = Path(root) / split
        if not folder.is_dir():
            raise FileNotFoundError(f"data: {folder} is not a directory (expected <data>/{split}/<class>/<image>)")
        found = sorted(d.name for d in folder.iterdir() if d.is_dir())
        classes = list(classes) if classes is not None else found
        if not classes:
            raise FileNotFoundError(f"data: no class folders in {folder}")
        missing = sorted(set(classes) - set(found))
        if missing:
            raise FileNotFoundError(f"data: {folder} lacks class folders {missing[:5]} (expected those of the train split)")
        candidates = []
        for target, c in enumerate(classes):
            for dirpath, _dirs, files in sorted(os.walk(folder / c, followlinks=True)):
                candidates += [(Path(dirpath) / name, target) for name in sorted(files)
                               if Path(name).suffix.lower() in IMAGE_EXTENSIONS]
        if not candidates:
            raise FileNotFoundError(f"data: no readable images under {folder} (extensions {IMAGE_EXTENSIONS})")
        super().__init__(folder, candidates, classes, check=check)
