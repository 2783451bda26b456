"""ImageFolder-style dataset, ``<root>/<split>/<class>/<image>``, that skips unreadable images.

Each candidate file is opened once at construction (``check="header"``: PIL parses the header, cheap;
``check="full"``: ``Image.verify()`` reads the whole file; ``check="none"``: no check). Files that
fail are left out with one warning listing them, and counted in :attr:`num_skipped`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder"]

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


class ImageFolder(Dataset):
    """``<root>/<split>/<class>/*``, classes sorted by folder name; items are ``(PIL RGB image, class)``.

    Attributes: ``classes`` (folder names), ``samples`` (``(path, class)`` list), ``skipped`` (paths of
    unreadable files), ``num_skipped``. ``image_id(i)`` is the path relative to ``<root>/<split>``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", check: str = "header",
                 classes: list[str] | None = None) -> None:
        if check not in CHECKS:
            raise ValueError(f"check: expected one of {CHECKS}, got {check!r}")
        self.root = Path(root) / split
        if not self.root.is_dir():
            raise FileNotFoundError(f"data: {self.root} is not a directory (expected <data>/{split}/<class>/<image>)")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.classes = list(classes) if classes is not None else found
        if not self.classes:
            raise FileNotFoundError(f"data: no class folders in {self.root}")
        missing = sorted(set(self.classes) - set(found))
        if missing:
            raise FileNotFoundError(f"data: {self.root} lacks class folders {missing[:5]} (expected those of the train split)")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[Path] = []
        for c in self.classes:
            for dirpath, _dirs, files in sorted(os.walk(self.root / c, followlinks=True)):
                for name in sorted(files):
                    path = Path(dirpath) / name
                    if path.suffix.lower() not in IMAGE_EXTENSIONS:
                        continue
                    if _readable(path, check):
                        self.samples.append((path, self.class_to_idx[c]))
                    else:
                        self.skipped.append(path)
        if self.skipped:
            listed = ", ".join(str(p.relative_to(self.root)) for p in self.skipped[:WARN_LIST])
            more = f" and {len(self.skipped) - WARN_LIST} more" if len(self.skipped) > WARN_LIST else ""
            warnings.warn(f"{self.root}: skipped {len(self.skipped)} unreadable image(s): {listed}{more}",
                          stacklevel=2)
        if not self.samples:
            raise FileNotFoundError(f"data: no readable images under {self.root} (extensions {IMAGE_EXTENSIONS})")

    def listing(self) -> dict:
        """What the scan found (``classes``, ``samples``, ``skipped``), for :meth:`from_listing` elsewhere."""
        return {"kind": "folder", "root": str(self.root), "classes": self.classes, "samples": [(str(p), t) for p, t in self.samples],
                "skipped": [str(p) for p in self.skipped]}

    @classmethod
    def from_listing(cls, listing: dict) -> ImageFolder:
        """The data set another process scanned (:meth:`listing`), without scanning again: under ``torchrun``
        rank 0 scans the folder once and the other ranks take its list."""
        self = cls.__new__(cls)
        self.root = Path(listing["root"])
        self.classes = list(listing["classes"])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(Path(p), int(t)) for p, t in listing["samples"]]
        self.skipped = [Path(p) for p in listing["skipped"]]
        return self

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.samples)

    def image_id(self, index: int) -> str:
        return self.samples[index][0].relative_to(self.root).as_posix()

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except Exception as exc:
            raise OSError(f"{path}: cannot be decoded ({exc}); build the dataset with check='full' to skip it") from exc
        return img, target
