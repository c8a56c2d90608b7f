"""Small JPEG copies of the images a report shows, written once and reused while their source is unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from ...data.io import read_image, to_uint8, write_image
from ...files import write_bytes_atomic

LONG_SIDE = 256  # pixels on the long side; the page shows them at most 180 pixels wide (sharp on HiDPI screens)
EXTENSION = ".jpg"  # JPEG: OpenCV encodes it ~20x faster than WebP and every browser and mail client opens it
QUALITY = 80  # about 10 KB at 256 x 171
MANIFEST = "thumbnails.json"  # thumbnail -> the source file, size and time it was made from


def shrink(image: np.ndarray, long_side: int = LONG_SIDE) -> np.ndarray:
    """``image`` resized (area averaging) so its long side is at most ``long_side``; never enlarged."""
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _stamp(source: Path) -> list:
    stat = source.stat()
    return [os.path.abspath(source), stat.st_size, stat.st_mtime_ns]


class Thumbnails:
    """The thumbnails of one report folder. A thumbnail is made once, and made again only when its source file
    (path, size or modification time) changed; :meth:`save` records what each was made from."""

    def __init__(self, folder: Path, long_side: int = LONG_SIDE) -> None:
        self.folder = Path(folder)
        self.long_side = long_side
        try:
            known = json.loads((self.folder / MANIFEST).read_text())
        except (OSError, ValueError):
            known = {}
        self.known: dict[str, dict] = known if isinstance(known, dict) else {}

    def make(self, source: Path, role: str, stem: str) -> tuple[Path, tuple[int, int]]:
        """The thumbnail of ``source`` as ``<folder>/<role>/<stem>.jpg`` and its (width, height).

        Raises :class:`~drsformer.errors.ImageReadError` naming ``source`` when it cannot be read.
        """
        thumb = self.folder / role / f"{stem}{EXTENSION}"
        key = f"{role}/{stem}{EXTENSION}"
        try:
            stamp = _stamp(source)
        except OSError:
            stamp = None  # read_image below says what is wrong with the file
        entry = self.known.get(key)
        if stamp is not None and isinstance(entry, dict) and entry.get("source") == stamp and thumb.is_file():
            width, height = entry["size"]
            return thumb, (int(width), int(height))
        small = shrink(to_uint8(read_image(source)), self.long_side)
        write_image(thumb, small, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        size = (small.shape[1], small.shape[0])
        self.known[key] = {"source": stamp, "size": list(size)}
        return thumb, size

    def save(self) -> None:
        """Writes the record of what each thumbnail was made from (atomically)."""
        write_bytes_atomic(self.folder / MANIFEST, json.dumps(self.known, indent=0, sort_keys=True).encode())
