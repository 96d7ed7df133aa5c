"""Manifests from an image folder laid out as torchvision's ``ImageFolder`` expects.

``root/<class>/**/<name>.<ext>``: each immediate sub-folder of ``root`` is a class, its images are
found recursively. A record's id is the image's path relative to ``root`` (posix), its image the
absolute path, its text the sidecar ``<name>.txt`` beside the image when there is one, else the
file name with ``-`` and ``_`` read as spaces.

The held-out split hashes ``seed`` and the image file a record's path resolves to (its folder and
name), so it does not depend on file order or on where the folder is, an item stays on its side
when others are added, and the links of an icon theme to one picture (1,422 oxygen 48x48 icons
are 1,145 distinct files) never put the same pixels on both sides.
"""

import functools
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from mmfast.data.manifest import Record, write_manifest

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFolderRecords(list):
    """The records of an image folder (a ``list[Record]``); ``skipped`` counts the dangling
    symlinks passed over."""

    skipped: int = 0

    @property
    def classes(self) -> list[str]:
        return sorted({label for record in self for label in record.labels})


def _text(image: Path) -> str:
    sidecar = image.with_suffix(".txt")
    if sidecar.is_file():
        return sidecar.read_text(encoding="utf-8").strip()
    return " ".join(word for word in re.split(r"[-_\s]+", image.stem) if word)


def _image_files(class_dir: Path, extensions: tuple[str, ...]):
    """Yield (path, is_dangling) for the image files under ``class_dir``. Symlinked folders are
    followed like torchvision does, each real folder once so that a link cycle ends."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        # hidden folders (.ipynb_checkpoints, .thumbnails) hold copies, not items
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(extensions):
                path = Path(dirpath, name)
                yield path, not path.exists()  # exists() follows the link to its target


def image_folder_records(
    root: str | os.PathLike, extensions: Iterable[str] = IMAGE_EXTENSIONS
) -> ImageFolderRecords:
    """One ``Record`` per image under ``root/<class>/``, sorted by id (see the module docstring).

    Extensions match case-insensitively. Raises ``ValueError`` when ``root`` is not a folder of
    class folders holding at least one image."""
    if isinstance(extensions, str):
        extensions = (extensions,)
    extensions = tuple(ext.lower() if ext.startswith(".") else f".{ext.lower()}"
                       for ext in extensions)
    root = Path(root).absolute()
    if not root.exists():
        raise ValueError(f"image folder {root}: expected an existing directory, got no such path")
    if not root.is_dir():
        raise ValueError(f"image folder {root}: expected a directory, got a file")
    class_dirs = sorted(path for path in root.iterdir()
                        if path.is_dir() and not path.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"image folder {root}: expected one sub-folder per class, got none")
    records = ImageFolderRecords()
    for class_dir in class_dirs:
        for path, dangling in _image_files(class_dir, extensions):
            if dangling:
                records.skipped += 1
                continue
            records.append(Record(path.relative_to(root).as_posix(), str(path), _text(path),
                                  (class_dir.name,)))
    if not records:
        dangling = f" ({records.skipped} dangling symlinks skipped)" if records.skipped else ""
        raise ValueError(
            f"image folder {root}: expected images ({', '.join(extensions)}) inside its "
            f"{len(class_dirs)} class folders, got none{dangling}")
    records.sort(key=lambda record: record.id)
    return records


def _check_fraction(heldout_fraction: float) -> None:
    if isinstance(heldout_fraction, bool) or not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction: expected a number in [0, 1), got {heldout_fraction!r}")


def split_records(
    records: Iterable[Record], heldout_fraction: float = 0.2, seed: int = 0,
    key: Callable[[Record], str] = lambda record: record.id,
) -> tuple[list[Record], list[Record]]:
    """``(train, heldout)``: each record goes to held-out when a hash of ``seed`` and its
    ``key`` (default: the id) falls below ``heldout_fraction``, so the split depends on neither
    order nor the other records, and records of one key stay together. Both lists keep the
    input order."""
    _check_fraction(heldout_fraction)
    train, heldout = [], []
    for record in records:
        digest = hashlib.blake2b(f"{seed}\0{key(record)}".encode(), digest_size=8).digest()
        side = heldout if int.from_bytes(digest, "little") < heldout_fraction * 2**64 else train
        side.append(record)
    return train, heldout


def validation_split(records: Iterable[Record], fraction: float,
                     seed: int = 0) -> tuple[list[Record], list[Record]]:
    """``(train, valid)``: the seeded ``fraction`` of ``records`` that validates, as
    ``mmfast train --valid-fraction`` and the benchmarks hold it out.

    Records showing one image file (after symlinks) stay on one side, as in the held-out split
    of ``write_image_folder_manifest``: on the oxygen icons, where 1,122 training records are 900
    files, an ungrouped split validated the text model at 0.90 while it scored 0.78 held out,
    and chose its last epoch where an early one held out better. The hash is salted, so this
    split is not the manifest's held-out split again: with the same seed, the keys left after
    that split all hash above its fraction, and the validation share would be empty.

    The key is the file's folder and name, after symlinks, not its whole path: the split is the
    same wherever the data is installed. (Keyed by the whole path, the demo validated on
    another 10% of its emoji in every virtual environment, whose site-packages hold them, and
    printed other figures.)"""
    return split_records(records, fraction, seed,
                         key=lambda record: "validation\0" + _image_key(record))


def _image_key(record: Record) -> str:
    """The file a record's image resolves to, as its folder and name (its id when it has no
    image): the same key wherever the data is installed or copied."""
    if not record.image:
        return record.id
    if os.path.islink(record.image):
        path = os.path.realpath(record.image)
    else:
        # One realpath per folder: resolving every file costs 16 us, 16 s per million records.
        folder, name = os.path.split(record.image)
        path = os.path.join(_real_folder(folder), name)
    return "/".join(path.split(os.sep)[-2:])


@functools.lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def write_image_folder_manifest(
    root: str | os.PathLike,
    out: str | os.PathLike,
    heldout: str | os.PathLike | None = None,
    heldout_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[ImageFolderRecords, int, int]:
    """Write the records of ``root`` to ``out`` (all of them when ``heldout`` is None, else the
    train side, the held-out side going to ``heldout``, split by the image file each record's
    path resolves to); returns ``(records, len(out), len(heldout))``."""
    if heldout is not None and Path(heldout).absolute() == Path(out).absolute():
        raise ValueError(f"heldout: expected a file other than out, got {heldout} for both")
    _check_fraction(heldout_fraction)  # refused before the folder is scanned
    records = image_folder_records(root)
    if heldout is None:
        write_manifest(out, records)
        return records, len(records), 0
    train, held = split_records(records, heldout_fraction, seed, key=_image_key)
    write_manifest(out, train)
    write_manifest(heldout, held)
    return records, len(train), len(held)
