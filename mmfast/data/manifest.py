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

``Manifest.batches`` gives the same records a batch at a time; it parses a JSONL file a chunk
of lines at a time with ``msgspec`` (a typed decoder: no dict per line, fields checked in C),
and any chunk holding a line that decoder does not take as it is (a bad record, a lone
surrogate, blank lines of non-ASCII spaces, deep nesting) goes through the line-by-line path
above, so both read the same records and fail or skip the same ones with the same messages.
"""

import csv
import functools
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from mmfast import _backend
from mmfast._io import atomic_path, cache_dir
from mmfast.sharding import take

FIELDS = ("id", "image", "text", "labels")
_CSV_LABEL_SEPARATOR = "|"
COLUMNAR = (".parquet", ".arrow")
_BATCH_ROWS = 8192  # rows a columnar file is decoded by: ~1-2 MB of short records
_CHUNK_BYTES = 1 << 21  # what a JSONL file is read and parsed by in Manifest.batches


class ManifestError(ValueError):
    """A record that is not ``{"id": str, "image": str, "text": str, "labels": [str, ...]}``."""


class Record(msgspec.Struct, frozen=True, gc=False):
    """One item of a manifest. A msgspec struct, not a dataclass: classify makes one per line,
    and a frozen dataclass's ``__init__`` (``object.__setattr__`` per field) took a quarter of
    its reading time; the struct is built in C. Its fields hold only strings, so the cyclic
    garbage collector need not track it (``gc=False``)."""

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


class RecordBatch:
    """Records of one manifest with their places: ``where(i)`` is ``"path:line"`` of
    ``records[i]``, as ``Manifest.numbered`` names it."""

    __slots__ = ("records", "lines", "path")

    def __init__(self, path: str, lines: list[int], records: list[Record]):
        self.path, self.lines, self.records = path, lines, records

    def __len__(self) -> int:
        return len(self.records)

    def where(self, index: int) -> str:
        return f"{self.path}:{self.lines[index]}"

    def numbered(self) -> list[tuple[str, Record]]:
        return [(self.where(i), record) for i, record in enumerate(self.records)]

    def subset(self, keep: Iterable[int]) -> "RecordBatch":
        """The records at the positions ``keep``, in that order."""
        keep = list(keep)
        return RecordBatch(self.path, [self.lines[i] for i in keep],
                           [self.records[i] for i in keep])


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
        for number, raw in take(self._file_rows(), self.shard):
            if isinstance(raw, str):  # a JSON line, parsed only in its shard
                raw = self._json(number, raw)
            yield number, self._renamed(raw)

    def _renamed(self, raw):
        """A row with the file's column names as the fields they stand for."""
        if not self.columns or not isinstance(raw, dict):
            return raw
        renamed = {column: field for field, column in self.columns.items()}
        return {renamed.get(key, key): value for key, value in raw.items()
                if key not in self.columns or key in renamed}

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
        path = str(self.path)
        for number, record in self._records(self._raw()):
            yield f"{path}:{number}", record

    def _records(self, rows: Iterable[tuple[int, object]]) -> Iterator[tuple[int, Record]]:
        """``(line, record)`` of ``(line, raw row)`` pairs; a bad row raises, or with
        ``skip_bad`` is counted in ``skipped``."""
        base = self.path.parent
        for number, raw in rows:
            try:
                if isinstance(raw, ManifestError):
                    raise raw
                record = _record(raw, f"{self.path}:{number}", base)
            except ManifestError:
                if not self.skip_bad:
                    raise
                self.skipped += 1
                continue
            yield number, record

    def batches(self, size: int) -> Iterator[RecordBatch]:
        """``numbered``'s records ``size`` at a time (the last batch may hold fewer): the same
        records, the same error at the same record (the batch it falls in is not yielded), the
        same ``skipped``. A JSONL file is parsed a chunk at a time (see the module docstring)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batches: size must be an integer >= 1, got {size!r}")
        self.skipped = 0
        is_json = not (self.path.is_dir() or self.path.suffix.lower() in (*COLUMNAR, ".csv"))
        decoder = _line_decoder(tuple(sorted(self.columns.items()))) if is_json else None
        chunks = (self._json_chunks(decoder) if decoder is not None
                  else _chunked(self._records(self._raw())))
        path, lines, records = str(self.path), [], []
        for chunk_lines, chunk_records in chunks:
            lines += chunk_lines
            records += chunk_records
            while len(records) >= size:
                yield RecordBatch(path, lines[:size], records[:size])
                del lines[:size], records[:size]
        if records:
            yield RecordBatch(path, lines, records)

    def _json_chunks(self, decoder) -> Iterator[tuple[list[int], list[Record]]]:
        """``(lines, records)`` of a JSONL file, a chunk of lines at a time: decoded by
        ``decoder`` when every line of the chunk is a record it takes as it is, else line by
        line as ``numbered`` reads them (the records before a bad one come first)."""
        index, count = self.shard or (0, 1)
        rows = 0  # the non-blank lines before the chunk: where the shard's rows fall
        base = self.path.parent
        prefix = str(base / "x")[:-1]  # what a plain relative image path is joined to
        # the reference backend (mmfast.set_backend) reads with Python alone
        native = (None if _backend.use_reference() else
                  _native_reader(tuple(sorted(self.columns.items())), prefix))
        for first, text in _line_chunks(self.path):
            fast = native(text, first, rows, index, count) if native else None
            if fast is None:
                lines = text.split(b"\n")
                if text.endswith(b"\n"):
                    lines.pop()  # the empty piece after the last newline
                fast = _decoded_chunk(decoder, first, lines, text, rows, index, count, base,
                                      prefix)
            if fast is not None:
                rows, numbers, records = fast
                yield numbers, records
                continue
            yield from _chunked(self._records(self._chunk_rows(first, lines, text, rows)))
            rows += sum(1 for line in lines if line.decode("utf-8", "surrogateescape").strip())

    def _chunk_rows(self, first: int, lines: list[bytes], text: bytes, rows: int
                    ) -> Iterator[tuple[int, object]]:
        """``_raw``'s rows of one chunk of a JSONL file (``rows`` non-blank lines before it)."""
        index, count = self.shard or (0, 1)
        for number, line in enumerate(lines, start=first):
            ended = number < first + len(lines) - 1 or text.endswith(b"\n")
            line = (line + b"\n" if ended else line).decode("utf-8", "surrogateescape")
            if not line.strip():
                continue
            rows += 1
            if (rows - 1) % count == index:
                yield number, self._renamed(self._json(number, line))


def _chunked(pairs: Iterable[tuple[int, Record]], size: int = 4096
             ) -> Iterator[tuple[list[int], list[Record]]]:
    """``(lines, records)`` lists of ``size`` pairs; those before an error come first."""
    lines, records = [], []
    try:
        for number, record in pairs:
            lines.append(number)
            records.append(record)
            if len(records) == size:
                yield lines, records
                lines, records = [], []
    except Exception:
        yield lines, records
        raise
    yield lines, records


def _line_chunks(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(number of the first line, the chunk's bytes)`` of a file: whole lines, about
    ``_CHUNK_BYTES`` at a time, cut after a newline (the last may end without one)."""
    first, pieces = 1, []  # pieces: the start of a line that began in an earlier block
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK_BYTES):
            cut = block.rfind(b"\n") + 1
            if cut == 0:  # no line ends in this block
                pieces.append(block)
                continue
            text = b"".join([*pieces, block[:cut]])
            pieces = [block[cut:]]
            yield first, text
            first += text.count(b"\n")
    if last := b"".join(pieces):  # a last line with no newline
        yield first, last


@functools.cache
def _native_reader(columns: tuple[tuple[str, str], ...], prefix: str):
    """The C++ reader of a chunk of JSONL lines (``read_jsonl_records`` in csrc/cpu/jsonl.cpp)
    as ``_decoded_chunk`` gives its result: it takes the lines it reads exactly as Python does
    and gives None for a chunk it leaves to Python. None where it cannot serve: columns that do
    not give each field its own key, a directory whose name is not UTF-8."""
    names = dict(columns)
    keys = tuple(names.get(field, field) for field in ("id", "image", "text", "labels", "label",
                                                       "image_id"))
    if len(set(keys)) != len(keys):
        return None
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError:
        return None
    from mmfast._native import _C  # here: reading a manifest loads no torch until it must

    def read(text: bytes, first: int, rows: int, index: int, count: int):
        return _C.read_jsonl_records(text, first, rows, index, count, keys, prefix, Record)
    return read


# First bytes of a line (after ASCII spaces) that may make it blank to str.strip() but not to
# bytes.strip() (\x1c-\x1f, U+3000, ...): their chunk is read line by line.
_UNSURE_BLANK = frozenset(bytes([byte]) for byte in (*range(0x1c, 0x20), *range(0x80, 0x100)))
# What json.loads refuses and msgspec takes: integers longer than sys.get_int_max_str_digits()
# (4300; 640 at least), and nesting near the recursion limit, where json's limit depends on the
# caller's stack: a line that long holding either is read line by line.
_LONG_LINE, _DEEP = 640, 400


@functools.cache
def _line_decoder(columns: tuple[tuple[str, str], ...]):
    """A msgspec decoder of one JSONL line into its record's fields (the file's column names
    read as ``columns`` maps them), or None where that cannot stand for ``numbered``'s reading:
    columns that do not give each field its own key."""
    names = dict(columns)
    keys = [names.get(field, field) for field in (*FIELDS, "label", "image_id")]
    if len(set(keys)) != len(keys):
        return None
    unset = msgspec.UNSET
    line = msgspec.defstruct("ManifestLine", [
        ("id", str), ("text", str), ("image", str, ""),
        ("labels", tuple[str, ...] | str | msgspec.UnsetType, unset),
        ("label", Any, unset), ("image_id", str, "")], rename=names, gc=False)
    return msgspec.json.Decoder(line).decode, unset


def _decoded_chunk(decoder, first: int, lines: list[bytes], text: bytes, rows: int, index: int,
                   count: int, base: Path, prefix: str):
    """``(rows, lines, records)`` of a chunk decoded as a whole, or None when a line of it
    needs the line-by-line path (a bad record or one the decoder might read otherwise)."""
    decode, unset = decoder
    if count == 1 and (text[:1] == b"{") + text.count(b"\n{") == len(lines):
        numbers, kept = list(range(first, first + len(lines))), lines  # no blank line
        rows += len(lines)
    else:
        numbers, kept = [], []
        for number, line in enumerate(lines, start=first):
            head = line.lstrip()[:1]
            if not head:
                continue
            if head in _UNSURE_BLANK:
                return None
            if rows % count == index:
                numbers.append(number)
                kept.append(line)
            rows += 1
    if kept and max(map(len, kept)) > _LONG_LINE:
        digits = _digit_run(getattr(sys, "get_int_max_str_digits", lambda: 4300)())
        for line in kept:
            if len(line) > _LONG_LINE and (line.count(b"[") + line.count(b"{") >= _DEEP
                                           or digits.search(line)):
                return None
    try:
        decoded = list(map(decode, kept))
    except Exception:  # msgspec's DecodeError, ValidationError, RecursionError
        return None
    labels = [line.labels for line in decoded]
    if not all(label.__class__ is tuple for label in labels):  # a label string, or "label"
        labels = [_labels(line, unset) for line in decoded]
        if None in labels:
            return None
    images = [line.image for line in decoded]
    if any(images):
        images = [prefix + image if image and image[0] != "/" and _plain(image) else
                  str(base / image) if image and image[0] != "/" else image for image in images]
    records = list(map(Record, [line.id for line in decoded], images,
                       [line.text for line in decoded], labels,
                       [line.image_id for line in decoded]))
    return rows, numbers, records


@functools.cache
def _digit_run(limit: int) -> re.Pattern:
    """Digits json.loads may refuse as an integer (more than ``limit``; 0: no limit)."""
    return re.compile(rb"[0-9]{%d}" % (limit + 1) if limit else rb"(?!)")


def _labels(line, unset) -> tuple[str, ...] | None:
    """A decoded line's labels as ``_record`` reads them, or None where it refuses them."""
    labels = line.labels
    if labels.__class__ is tuple:
        return labels
    if labels is unset:  # no "labels": "label" stands for them
        labels = line.label
        if labels is unset:
            return ()
        if isinstance(labels, list):
            return tuple(labels) if all(isinstance(label, str) for label in labels) else None
    return (labels,) if isinstance(labels, str) else None


def _plain(image: str) -> bool:
    """A relative path that ``Path`` joins as it is: no empty, "." or trailing component."""
    return not ("//" in image or "/." in image or image[0] == "." or image[-1] == "/")


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
                  columns: dict[str, str] | None = None,
                  shard: tuple[int, int] | None = None) -> list[Record]:
    """The records of ``path`` (with ``shard`` = ``(I, N)``: every N-th from the I-th, the
    others' lines not parsed)."""
    return list(Manifest(path, skip_bad=skip_bad, columns=columns, shard=shard))


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
