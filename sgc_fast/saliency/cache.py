"""On-disk cache of one split's saliency masks, read by sample index during training.

File layout (``.sgcmask``)::

    MAGIC (8 bytes) | header length n (uint64 little-endian) | JSON header (n bytes, padded with spaces
    so that the data starts at a multiple of 64) | data: uint8 [N, S, ceil(S / 8)]

The data are the masks bit-packed along the last axis (``np.packbits(mask, axis=-1)``, 1 bit per
pixel: 6.3 KB per 224×224 mask), memory-mapped read-only. The header holds the format version, ``N``,
``S`` and the *key*::

    {"image_ids": {"sha256": <hash of the ordered id list>, "count": N},
     "provider": {"name": ..., "config": {...}},
     "extra": {...}}   # caller's key_extra, e.g. {"transform": center_view_params(S)}

``MaskCache.open(path, expected_key)`` refuses a stale cache: every field given in ``expected_key``
must equal the stored one (fields left out of ``expected_key`` are not checked, so a reader that does
not know the provider may pass only ``image_ids`` and ``extra``). Build keys with
:meth:`MaskCache.make_key`.

``MaskCache.build`` writes to a temporary file in the same directory and renames it into place only
when every mask is written, so an interrupted build never leaves a partial cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..files import temp_path
from .providers import SaliencyProvider

__all__ = ["MaskCache", "StaleMaskCacheError", "ids_digest"]

MAGIC = b"SGCMASK\x01"
FORMAT_VERSION = 1
DATA_ALIGN = 64
_LEN = struct.Struct("<Q")
KEY_SECTIONS = ("image_ids", "provider", "extra")


class StaleMaskCacheError(ValueError):
    """The cache on disk was built for other images, another provider or another transform."""


def ids_digest(image_ids: Sequence[str]) -> dict:
    """``{"sha256": ..., "count": N}`` of the ordered image id list (ids joined by newlines, UTF-8)."""
    h = hashlib.sha256()
    for i, image_id in enumerate(image_ids):
        s = str(image_id)
        if "\n" in s:
            raise ValueError(f"image_ids[{i}]: ids may not contain a newline, got {s!r}")
        h.update(s.encode("utf-8", "surrogateescape") + b"\n")  # file names need not be UTF-8
    return {"sha256": h.hexdigest(), "count": len(image_ids)}


def _jsonable(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


def _differences(expected, stored, where: str) -> list[str]:
    """Leaves of ``expected`` that ``stored`` lacks or holds with another value, as ``path: a != b``."""
    if isinstance(expected, dict) and isinstance(stored, dict):
        out = []
        for k, v in expected.items():
            if k not in stored:
                out.append(f"{where}.{k}: expected {v!r}, the cache has none")
            else:
                out.extend(_differences(v, stored[k], f"{where}.{k}"))
        return out
    return [] if expected == stored else [f"{where}: expected {expected!r}, the cache has {stored!r}"]


class MaskCache:
    """Read-only view of a mask cache file. ``cache[i] -> np.ndarray bool [S, S]``; ``len(cache) = N``.

    Picklable (reopens the memory map lazily), so it can be handed to DataLoader workers.
    """

    def __init__(self, path: str | Path, header: dict, offset: int) -> None:
        self.path = Path(path)
        self.header = header
        self.key: dict = header["key"]
        self.count: int = int(header["count"])
        self.size: int = int(header["size"])
        self._offset = offset
        self._data: np.ndarray | None = None

    # ------------------------------------------------------------------ keys
    @staticmethod
    def make_key(
        image_ids: Sequence[str] | None = None,
        provider: SaliencyProvider | dict | None = None,
        key_extra: dict | None = None,
    ) -> dict:
        """The cache key (or, with ``None`` parts left out, a partial key for :meth:`open`).

        ``provider`` is a provider or a dict ``{"name": ..., "config": {...}}``.
        """
        key: dict = {}
        if image_ids is not None:
            key["image_ids"] = ids_digest(image_ids)
        if provider is not None:
            key["provider"] = provider if isinstance(provider, dict) else {"name": provider.name, "config": provider.config()}
        if key_extra is not None:
            key["extra"] = key_extra
        return _jsonable(key)

    # ------------------------------------------------------------------ read
    @classmethod
    def read_header(cls, path: str | Path) -> tuple[dict, int]:
        path = Path(path)
        with open(path, "rb") as f:
            magic = f.read(len(MAGIC))
            if magic != MAGIC:
                raise ValueError(f"{str(path)!r} is not a mask cache (bad magic {magic!r})")
            raw = f.read(_LEN.size)
            (n,) = _LEN.unpack(raw) if len(raw) == _LEN.size else (-1,)
            size = os.fstat(f.fileno()).st_size
            if n < 0 or n > size - len(MAGIC) - _LEN.size:
                raise ValueError(f"mask cache {str(path)!r} is truncated (its header is cut off); rebuild it with "
                                 f"`sgc-saliency`")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"mask cache {str(path)!r} has a damaged header ({exc}); rebuild it") from None
        if not isinstance(header, dict) or not {"count", "size", "key"} <= set(header):
            raise ValueError(f"mask cache {str(path)!r} has a damaged header (no count/size/key); rebuild it")
        if header.get("format_version") != FORMAT_VERSION:
            raise StaleMaskCacheError(f"{str(path)!r}: format version {header.get('format_version')}, "
                                      f"expected {FORMAT_VERSION}; rebuild it with `sgc-saliency`")
        return header, len(MAGIC) + _LEN.size + n

    @classmethod
    def open(cls, path: str | Path, expected_key: dict | None) -> MaskCache:
        """Open ``path`` after checking its key against ``expected_key`` (``None``: no check).

        Raises ``FileNotFoundError`` when missing and :class:`StaleMaskCacheError` naming the differing
        key parts (``image_ids``, ``provider``, ``extra``) when it was built for something else.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mask cache {str(path)!r} not found; build it with `sgc-saliency`")
        header, offset = cls.read_header(path)
        if expected_key is not None:
            expected = _jsonable(expected_key)
            unknown = set(expected) - set(KEY_SECTIONS)
            if unknown:
                raise ValueError(f"expected_key: unknown sections {sorted(unknown)}, expected some of {KEY_SECTIONS}")
            diffs = _differences(expected, header["key"], "key")
            if diffs:
                parts = sorted({d.split(".")[1].split(":")[0] for d in diffs})
                hint = {
                    "image_ids": "the image list (split, data directory or its files) changed",
                    "provider": "another saliency provider, weight file or threshold",
                    "extra": "another image size or transform",
                }
                raise StaleMaskCacheError(
                    f"mask cache {str(path)!r} is stale: {', '.join(parts)} differ"
                    f" ({'; '.join(hint[p] for p in parts if p in hint)}):\n  " + "\n  ".join(diffs[:8])
                    + "\nDelete it and rebuild it with `sgc-saliency` (or MaskCache.build) for the current settings."
                )
        count, side = int(header["count"]), int(header["size"])
        if count < 0 or side < 0:
            raise ValueError(f"mask cache {str(path)!r} has a damaged header (count {count}, size {side})")
        want, have = offset + count * side * ((side + 7) // 8), path.stat().st_size
        if have != want:
            state = "truncated" if have < want else "longer than its header says"
            raise ValueError(f"mask cache {str(path)!r} is {state}: {have} bytes, {count} masks of {side}x{side} "
                             f"take {want}; rebuild it with `sgc-saliency`")
        return cls(path, header, offset)

    def empty_fraction(self, sample: int = 1024) -> float:
        """Share of all-empty masks among ``sample`` masks spread evenly over the cache (all when fewer)."""
        if self.count == 0:
            return 1.0
        idx = np.unique(np.linspace(0, self.count - 1, min(sample, self.count)).round().astype(np.int64))
        return float((self.data[idx].reshape(len(idx), -1).max(axis=1) == 0).mean())

    @property
    def data(self) -> np.ndarray:
        """Bit-packed masks ``uint8 [N, S, ceil(S / 8)]`` (memory-mapped)."""
        if self._data is None:
            shape = (self.count, self.size, (self.size + 7) // 8)
            if self.count == 0:
                self._data = np.zeros(shape, dtype=np.uint8)
            else:
                self._data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._offset, shape=shape)
        return self._data

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        i = int(index)
        if not -self.count <= i < self.count:
            raise IndexError(f"index {i} out of range for a mask cache of {self.count} masks")
        return np.unpackbits(self.data[i], axis=-1, count=self.size).astype(bool)

    def masks(self, indices: Sequence[int]) -> torch.Tensor:
        """``bool [B, S, S]`` tensor of the masks at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        bits = np.unpackbits(self.data[idx], axis=-1, count=self.size)
        return torch.from_numpy(bits.astype(bool))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_data"] = None
        return state

    def __repr__(self) -> str:
        return f"MaskCache({str(self.path)!r}, count={self.count}, size={self.size}, provider={self.key.get('provider')})"

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        path: str | Path,
        image_ids: Sequence[str],
        provider: SaliencyProvider,
        load_batch_fn: Callable[[list[int]], torch.Tensor] | None,
        key_extra: dict | None = None,
        batch_size: int = 32,
        progress: bool = True,
    ) -> MaskCache:
        """Compute the masks of all ``image_ids`` in order and write them to ``path`` atomically.

        Args:
            path: output file (its directory is created).
            image_ids: ordered ids of the split; sample ``i`` of the cache is ``image_ids[i]``.
            provider: a :class:`SaliencyProvider`; called as ``provider.masks_for(indices, images)``.
            load_batch_fn: ``indices -> [B, 3, S, S]`` normalised centre views (see
                :func:`~sgc_fast.saliency.transforms.center_view_transform`), called with consecutive
                index chunks ``[0, b), [b, 2b), …`` in order; may be ``None`` when
                ``provider.needs_images`` is false.
            key_extra: the caller's part of the key, e.g. ``{"transform": center_view_params(S)}``.
            batch_size: samples per provider call.
            progress: show a tqdm progress bar.
        """
        from tqdm.auto import tqdm

        path = Path(path)
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if load_batch_fn is None and provider.needs_images:
            raise ValueError(f"load_batch_fn: provider {provider.name!r} needs images, got None")
        ids = [str(i) for i in image_ids]
        key = cls.make_key(ids, provider, key_extra if key_extra is not None else {})
        N = len(ids)
        out: np.memmap | None = None
        size: int | None = None
        header: dict = {}
        # A fresh temporary file (mkstemp: random name, O_EXCL) beside the target, renamed into place when every
        # mask is written; removed on any failure (sgc_fast.files.temp_path).
        with temp_path(path) as tmp:
            bar = tqdm(total=N, desc=f"masks {provider.name}", unit="img", disable=not progress)
            with bar:
                for start in range(0, N, batch_size):
                    indices = list(range(start, min(start + batch_size, N)))
                    images = load_batch_fn(indices) if provider.needs_images else None
                    masks = provider.masks_for(indices, images)
                    masks = torch.as_tensor(masks)
                    if masks.ndim != 3 or masks.shape[0] != len(indices) or masks.shape[1] != masks.shape[2]:
                        raise ValueError(f"provider {provider.name!r}: expected masks [{len(indices)}, S, S], "
                                         f"got {tuple(masks.shape)}")
                    if size is None:
                        size = int(masks.shape[-1])
                        header = {"format_version": FORMAT_VERSION, "count": N, "size": size, "packed": "bits-last-axis",
                                  "key": key}
                        offset = cls._write_header(tmp, header)
                        out = np.memmap(tmp, dtype=np.uint8, mode="r+", offset=offset,
                                        shape=(N, size, (size + 7) // 8))
                    elif masks.shape[-1] != size:
                        raise ValueError(f"provider {provider.name!r}: mask size changed from {size} to {masks.shape[-1]}")
                    out[start:start + len(indices)] = np.packbits(masks.cpu().numpy().astype(bool), axis=-1)
                    bar.update(len(indices))
            if size is None:  # empty split: header only
                size = int((key_extra or {}).get("transform", {}).get("image_size", 0))
                header = {"format_version": FORMAT_VERSION, "count": 0, "size": size, "packed": "bits-last-axis",
                          "key": key}
                cls._write_header(tmp, header)
            if out is not None:
                out.flush()
                del out
        return cls.open(path, key)

    @staticmethod
    def _write_header(path: Path, header: dict) -> int:
        """Write magic + length + padded JSON header to ``path``; return the data offset."""
        raw = json.dumps(header, sort_keys=True).encode("utf-8")
        fixed = len(MAGIC) + _LEN.size
        raw += b" " * ((-(fixed + len(raw))) % DATA_ALIGN)
        with open(path, "r+b") as f:
            f.write(MAGIC + _LEN.pack(len(raw)) + raw)
            f.truncate(fixed + len(raw))
        return fixed + len(raw)
