"""Dataset manifests: one record per item, ``{"id", "image", "text", "labels"}``.

JSONL (one object a line) or CSV (header ``id,image,text,labels``, labels joined by ``|``).
Relative image paths are relative to the manifest's directory. A bad record raises
``ManifestError`` naming the file and line, or is skipped and counted with ``skip_bad=True``.
"""

import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mmfast._io import atomic_path

FIELDS = ("id", "image", "text", "labels")
_CSV_LABEL_SEPARATOR = "|"


class ManifestError(ValueError):
    """A record that is not ``{"id": str, "image": str, "text": str, "labels": [str, ...]}``."""


@dataclass(frozen=True)
class Record:
    id: str
    image: str
    text: str
    labels: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"id": self.id, "image": self.image, "text": self.text, "labels": list(self.labels)}


def _record(raw, where: str, base: Path) -> Record:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    missing = [field for field in ("id", "text") if field not in raw]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}; expected {FIELDS}")
    for field in ("id", "image", "text"):
        if field in raw and not isinstance(raw[field], str):
            raise ManifestError(
                f"{where}: field {field!r} must be a string, got {type(raw[field]).__name__}"
            )
    labels = raw.get("labels", [])
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ManifestError(f"{where}: field 'labels' must be a list of strings, got {labels!r}")
    for field, value in (*((f, raw.get(f, "")) for f in ("id", "image", "text")),
                         *(("labels", label) for label in labels)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ManifestError(f"{where}: field {field!r} must be UTF-8 text, got "
                                f"{value[error.start]!r} (a byte that is not UTF-8, or a lone "
                                f"surrogate) at position {error.start}") from None
    image = raw.get("image", "")
    if image and not os.path.isabs(image):
        image = str(base / image)
    return Record(raw["id"], image, raw["text"], tuple(labels))


class Manifest:
    """Iterate the records of a JSONL or CSV manifest; ``skipped`` counts bad records passed
    over when ``skip_bad`` is set."""

    def __init__(self, path: str | os.PathLike, skip_bad: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest {self.path} does not exist")
        self.skip_bad = skip_bad
        self.skipped = 0

    def _lines(self) -> Iterator[str]:
        # Bytes that are not UTF-8 survive decoding as lone surrogates ("surrogateescape"), so
        # the record holding them is refused on its own (named, skippable with skip_bad) and
        # the read goes on; a JSON "\\ud800" escape yields the same lone surrogate.
        with open(self.path, "rb") as handle:
            for raw in handle:
                yield raw.decode("utf-8", "surrogateescape")

    def _raw(self) -> Iterator[tuple[int, object]]:
        if self.path.suffix.lower() == ".csv":
            reader = csv.DictReader(self._lines())
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as error:  # e.g. a field over csv.field_size_limit()
                    line = reader.line_num + 1  # the reader counts the lines it finished
                    yield line, ManifestError(f"{self.path}:{line}: not valid CSV ({error})")
                    continue  # the reader goes on at the next line
                if row.get("labels") is not None:
                    row["labels"] = [
                        label for label in row["labels"].split(_CSV_LABEL_SEPARATOR) if label
                    ]
                yield reader.line_num, row
        for number, line in enumerate(self._lines(), start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                yield number, ManifestError(f"{self.path}:{number}: not valid JSON ({error})")
            except RecursionError:
                yield number, ManifestError(f"{self.path}:{number}: expected a record, got JSON "
                                            "nested deeper than Python's recursion limit")

    def __iter__(self) -> Iterator[Record]:
        return (record for _, record in self.numbered())

    def numbered(self) -> Iterator[tuple[str, Record]]:
        """``(where, record)`` pairs, ``where`` = ``"path:line"``: what a later error about the
        record (an unreadable image) names."""
        self.skipped = 0
        base = self.path.parent
        for number, raw in self._raw():
            where = f"{self.path}:{number}"
            try:
                if isinstance(raw, ManifestError):
                    raise raw
                record = _record(raw, where, base)
            except ManifestError:
                if not self.skip_bad:
                    raise
                self.skipped += 1
                continue
            yield where, record


def read_manifest(path: str | os.PathLike, skip_bad: bool = False) -> list[Record]:
    return list(Manifest(path, skip_bad=skip_bad))


def write_manifest(path: str | os.PathLike, records: Iterable[Record]) -> None:
    """Write ``records`` as JSONL (or CSV for a ``.csv`` path), atomically."""
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as out:
        if path.suffix.lower() == ".csv":
            writer = csv.writer(out)
            writer.writerow(FIELDS)
            for record in records:
                writer.writerow([record.id, record.image, record.text,
                                 _CSV_LABEL_SEPARATOR.join(record.labels)])
        else:
            for record in records:
                out.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
