"""Dataset manifests: one record per item, ``{"id", "image", "text", "labels"}``.

JSONL (one object a line), CSV (header ``id,image,text,labels``, labels joined by ``|``), the
columnar files of data frames and Hugging Face ``datasets`` exports: Parquet (``.parquet``) and
Arrow (``.arrow``, what ``Dataset.save_to_disk`` writes), read with pyarrow a batch of rows at
a time, or an image folder (a directory: ``mmfast.data.image_folder_records``). Every file
format is streamed: memory stays bounded however long the file. Images stored in a columnar file
as encoded bytes (``datasets``' ``Image`` feature without a path) are written once to
``<mmfast cache>/images/`` under their content's hash, and the record names that file.
``columns`` maps the fields to a file's own column names (``{"text": "caption", "labels":
"label"}``); in a columnar file without an id column, the row number is the id, and integer
labels (``datasets``' ``ClassLabel``) read as their decimal strings. A record's ``label`` stands
for ``labels`` when it has none (one label: a relevance manifest's class), and its
``image_id`` names another item whose stored image features it reads (a pairs file). Relative
image paths are relative to the manifest's directory. A bad record raises ``ManifestError``
naming the file and line (row), or is skipped and counted with ``skip_bad=True``.
"""

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mmfast._io import atomic_path, cache_dir
from mmfast.sharding import take

FIELDS = ("id", "image", "text", "labels")
_CSV_LABEL_SEPARATOR = "|"
COLUMNAR = (".parquet", ".arrow")
_BATCH_ROWS = 8192  # rows a columnar file is decoded by: ~1-2 MB of short records


class ManifestError(ValueError):
    """A record that is not ``{"id": str, "image": str, "text": str, "labels": [str, ...]}``."""


@dataclass(frozen=True)
class Record:
    id: str
    image: str
    text: str
    labels: tuple[str, ...] = ()
    # the store id of the item whose image this record shows, when not its own: a pairs file
    # (image-text relevance) names images extracted once under their items' ids
    image_id: str = ""

    @property
    def store_id(self) -> str:
        """The id its image features are stored under."""
        return self.image_id or self.id

    def to_json(self) -> dict:
        row = {"id": self.id, "image": self.image, "text": self.text, "labels": list(self.labels)}
        return {**row, "image_id": self.image_id} if self.image_id else row


def _record(raw, where: str, base: Path) -> Record:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    missing = [field for field in ("id", "text") if field not in raw]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}; expected {FIELDS}")
    for field in ("id", "image", "text", "image_id"):
        if field in raw and not isinstance(raw[field], str):
            raise ManifestError(
                f"{where}: field {field!r} must be a string, got {type(raw[field]).__name__}"
            )
    labels = raw.get("labels", raw.get("label", []))  # "label": one label, a relevance class
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
    return Record(raw["id"], image, raw["text"], tuple(labels), raw.get("image_id", ""))


class Manifest:
    """Iterate the records of a manifest (see the module docstring); ``skipped`` counts bad
    records passed over when ``skip_bad`` is set. With ``shard`` = ``(I, N)`` it reads every
    N-th row from the I-th (0-based, counting every row, bad ones too), and spends no parsing
    on the others: N processes share a file."""

    def __init__(self, path: str | os.PathLike, skip_bad: bool = False,
                 columns: dict[str, str] | None = None, shard: tuple[int, int] | None = None):
        self.path = Path(path)
        if not (self.path.is_file() or self.path.is_dir()):
            raise FileNotFoundError(f"manifest {self.path} does not exist")
        unknown = set(columns or {}) - set(FIELDS)
        if unknown:
            raise ValueError(f"columns: the fields are {FIELDS}, got {sorted(unknown)}")
        self.skip_bad = skip_bad
        self.columns = dict(columns or {})  # field -> the file's column
        self.shard = shard
        self.skipped = 0

    def _lines(self) -> Iterator[str]:
        # Bytes that are not UTF-8 survive decoding as lone surrogates ("surrogateescape"), so
        # the record holding them is refused on its own (named, skippable with skip_bad) and
        # the read goes on; a JSON "\\ud800" escape yields the same lone surrogate.
        with open(self.path, "rb") as handle:
            for raw in handle:
                yield raw.decode("utf-8", "surrogateescape")

    def _raw(self) -> Iterator[tuple[int, object]]:
        renamed = {column: field for field, column in self.columns.items()}
        for number, raw in take(self._file_rows(), self.shard):
            if isinstance(raw, str):  # a JSON line, parsed only in its shard
                raw = self._json(number, raw)
            if renamed and isinstance(raw, dict):
                raw = {renamed.get(key, key): value for key, value in raw.items()
                       if key not in self.columns or key in renamed}
            yield number, raw

    def _file_rows(self) -> Iterator[tuple[int, object]]:
        if self.path.is_dir():
            from mmfast.data.image_folder import image_folder_records

            for number, record in enumerate(image_folder_records(self.path), start=1):
                yield number, record.to_json()
            return
        if self.path.suffix.lower() in COLUMNAR:
            yield from self._columnar_rows()
            return
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
                labels = self.columns.get("labels", "labels")
                if row.get(labels) is not None:
                    row[labels] = [
                        label for label in row[labels].split(_CSV_LABEL_SEPARATOR) if label
                    ]
                yield reader.line_num, row
        for number, line in enumerate(self._lines(), start=1):
            if line.strip():
                yield number, line

    def _json(self, number: int, line: str):
        """The JSON value of a line, or the ManifestError saying why it is none."""
        try:
            return json.loads(line)
        except json.JSONDecodeError as error:
            return ManifestError(f"{self.path}:{number}: not valid JSON ({error})")
        except RecursionError:
            return ManifestError(f"{self.path}:{number}: expected a record, got JSON nested "
                                 "deeper than Python's recursion limit")

    def _columnar_rows(self) -> Iterator[tuple[int, object]]:
        """Rows of a Parquet or Arrow file, a batch at a time, as the JSON records would be."""
        try:
            import pyarrow.ipc
            import pyarrow.parquet
        except ImportError:
            raise ValueError(f"manifest {self.path}: reading {self.path.suffix} files needs "
                             "pyarrow (pip install pyarrow)") from None
        try:
            if self.path.suffix.lower() == ".parquet":
                # read as it is decoded (no pre-buffering): one row group's columns in memory
                batches = pyarrow.parquet.ParquetFile(
                    self.path, pre_buffer=False, buffer_size=1 << 20).iter_batches(_BATCH_ROWS)
            else:
                batches = _arrow_batches(self.path)
            names = {self.columns.get(field, field) for field in FIELDS} | {"label", "image_id"}
            number = 0
            for batch in batches:
                batch = batch.select([name for name in batch.schema.names if name in names])
                id_column = self.columns.get("id", "id")
                for row in batch.to_pylist():
                    number += 1
                    if id_column not in row:
                        row[id_column] = str(number)
                    yield number, _columnar_values(row, self.columns)
        except (OSError, pyarrow.ArrowException) as error:
            raise ValueError(f"manifest {self.path}: not a readable {self.path.suffix} file "
                             f"({error})") from None

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


def _arrow_batches(path: Path):
    """The record batches of an Arrow file, ``_BATCH_ROWS`` rows at a time: the IPC stream
    format that ``datasets`` writes, or the random-access file format. Read, not memory-mapped:
    a mapping would keep the pages of the whole file resident."""
    import pyarrow.ipc

    try:
        reader = pyarrow.ipc.open_stream(pyarrow.OSFile(str(path)))
        batches = iter(reader)
    except pyarrow.ArrowInvalid:
        reader = pyarrow.ipc.open_file(pyarrow.OSFile(str(path)))
        batches = (reader.get_batch(index) for index in range(reader.num_record_batches))
    for batch in batches:
        for start in range(0, len(batch), _BATCH_ROWS):
            yield batch.slice(start, _BATCH_ROWS)


def _columnar_values(row: dict, columns: dict[str, str]) -> dict:
    """A columnar row's values as the JSON records have them: an image struct (``datasets``'
    ``Image`` feature) by its path, or encoded image bytes by the cache file holding them,
    integer labels as strings, a missing value as none."""
    image, labels = columns.get("image", "image"), columns.get("labels", "labels")
    if labels not in row and "label" in row:
        row[labels] = row.pop("label")
    value = row.get(image)
    if isinstance(value, dict):
        value = value.get("path") or value.get("bytes") or ""
    if isinstance(value, bytes):
        value = _image_file(value)
    row[image] = "" if value is None else value
    value = row.get(labels)
    if value is None:
        row[labels] = []
    elif isinstance(value, (int, str)):
        row[labels] = [str(value)]
    elif isinstance(value, list):
        row[labels] = [str(label) if isinstance(label, int) else label for label in value]
    return row


def _image_file(data: bytes) -> str:
    """The cache file holding the encoded image ``data``, written (atomically) the first time:
    named by the content's hash, so an image is stored once however often it is read."""
    digest = hashlib.sha256(data).hexdigest()
    path = cache_dir() / "images" / digest[:2] / digest
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            Path(temporary).write_bytes(data)
    return str(path)


def read_manifest(path: str | os.PathLike, skip_bad: bool = False,
                  columns: dict[str, str] | None = None) -> list[Record]:
    return list(Manifest(path, skip_bad=skip_bad, columns=columns))


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
