"""The streaming classify path (issue #17): ``Manifest.batches`` reads what ``Manifest.numbered``
reads (the same records, errors, skips and shards, whichever way a chunk is parsed), the
read-ahead thread keeps the order of items and errors, and ``mmfast classify`` writes the rows
the per-item formatting wrote before."""

import csv
import io
import json
import random
import sys
import threading

import pytest
import torch

from mmfast import commands, predictions
from mmfast.cli import main
from mmfast.data import Manifest, ManifestError, Record, manifest as manifest_module

# Lines of every kind the two readers must agree on: good records in each spelling, blank
# lines to Python that are not blank to bytes.strip(), and bad records of every kind.
# (NaN is good to json.loads: msgspec refuses it, and its chunk is read line by line.)
GOOD = [
    b'{"id": "a", "image": "img/a.jpg", "text": "red cat", "labels": ["x", "y"]}',
    b'{"id": "b", "text": "blue \\u00e9 dog \\ud83d\\ude00", "labels": "z"}',
    b'{"id": "c", "text": "no labels", "image": "/abs/c.png"}',
    b'{"id": "d", "text": "one label", "label": "x", "image": "./dot/d.jpg"}',
    b'{"id": "e", "text": "list label", "label": ["x", "w"], "image": "a//b/../e.jpg"}',
    b'{"id": "f", "text": "pair", "image_id": "a", "extra": {"n": [1, 2.5, null, true]}}',
    b'  {"id": "g", "text": "spaced", "labels": []}  \r',
    b'{"text": "key order", "id": "h", "id": "h2", "image": "i/"}',
    b'{"id": "i\\"\\\\", "text": "\\", \\" quote", "labels": ["\\", \\""]}',
    '{"id": "j", "text": "raw ünïcode 猫", "labels": ["é"]}'.encode(),
    b'{"id": "k", "text": "big", "n": 1e400, "m": 123456789012345678901234567890}',
    b'{"id": "l", "text": "both", "labels": ["x"], "label": 5}',
    b'{"id": "s", "text": "json.loads takes NaN", "x": NaN}',
]
BLANK = [b"", b"   ", b"\t\r", "\u3000".encode(), b"\x1c", "\u00a0 ".encode()]
BAD = [
    b'{"id": "m"}',
    b'{"id": 1, "text": "t"}',
    b'{"id": "n", "text": "t", "labels": [1]}',
    b'{"id": "o", "text": "t", "labels": null}',
    b'{"id": "p", "text": "t", "label": 3}',
    b'{"id": "q", "text": "\\ud800 lone"}',
    b'{"id": "r", "text": "\xff\xfe bytes"}',
    b'{"id": "t", "text": "t"} {"id": "u", "text": "t"}',
    b'{"id": "v", "text": "t",',
    b'[1, 2]',
    b'\xef\xbb\xbf{"id": "w", "text": "bom"}',
    b'{"id": "x", "text": "t", "n": ' + b"7" * 5000 + b"}",
    # beyond any recursion limit's reach: near the limit, whether json.loads manages depends
    # on the caller's stack, which differs between the two readers and between runs
    b'{"id": "y", "text": "t", "n": ' + b"[" * 5000 + b"]" * 5000 + b"}",
]


def _read_all(manifest: Manifest, size: int):
    """What ``batches`` gives: its (where, record) pairs, the error, and the skip count."""
    pairs, error = [], None
    try:
        for batch in manifest.batches(size):
            assert 0 < len(batch) <= size
            pairs.append(batch.numbered())
    except Exception as raised:  # noqa: BLE001 - compared with numbered's
        error = (type(raised), str(raised))
    return pairs, error, manifest.skipped


def _read_numbered(manifest: Manifest, size: int):
    """The reference: ``numbered`` grouped as the old classify grouped it."""
    pairs, error, batch = [], None, []
    try:
        for pair in manifest.numbered():
            batch.append(pair)
            if len(batch) == size:
                pairs.append(batch)
                batch = []
        if batch:
            pairs.append(batch)
    except Exception as raised:  # noqa: BLE001
        error = (type(raised), str(raised))
    return pairs, error, manifest.skipped


def _manifest_bytes(rng: random.Random, lines: int, bad: float) -> bytes:
    pool = [*GOOD * 4, *BLANK] + (BAD if bad else [])
    body = b"\n".join(rng.choice(pool) for _ in range(lines))
    return body + (b"\n" if rng.random() < 0.7 else b"")


@pytest.mark.parametrize("seed", range(40))
def test_batches_read_what_numbered_reads(tmp_path, monkeypatch, seed):
    """Random manifests of good, blank and bad lines, cut into chunks of a few hundred bytes
    (so chunks begin mid-file, hold one line, or lines longer than a chunk): every batch size,
    shard, skip_bad and column mapping gives numbered's records, error and skip count."""
    rng = random.Random(seed)
    monkeypatch.setattr(manifest_module, "_CHUNK_BYTES", rng.choice([64, 300, 1 << 21]))
    path = tmp_path / "items.jsonl"
    path.write_bytes(_manifest_bytes(rng, rng.randint(0, 60), bad=seed % 3 == 0))
    columns = rng.choice([None, {"text": "text"}, {"id": "text", "text": "id"},
                          {"labels": "label"}])
    for skip_bad in (False, True):
        for shard in (None, (1, 3)):
            size = rng.choice([1, 2, 5, 1000])
            fast = _read_all(Manifest(path, skip_bad, columns, shard), size)
            slow = _read_numbered(Manifest(path, skip_bad, columns, shard), size)
            assert fast == slow, (skip_bad, shard, size, columns)


def test_every_bad_line_gets_numbereds_message(tmp_path):
    for line in BAD:
        path = tmp_path / "bad.jsonl"
        path.write_bytes(b"\n".join(GOOD) + b"\n" + line + b"\n" + GOOD[0] + b"\n")
        fast, slow = _read_all(Manifest(path), 4), _read_numbered(Manifest(path), 4)
        assert fast == slow and fast[1] is not None, line[:40]
        assert fast[1][1].startswith(f"{path}:{len(GOOD) + 1}: ") or fast[1][0] is not ManifestError


@pytest.mark.skipif(not hasattr(sys, "set_int_max_str_digits"), reason="no int digit limit")
def test_integers_over_pythons_digit_limit_read_as_json_loads_reads_them(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(GOOD[0] + b"\n" + b'{"id": "n", "text": "t", "n": ' + b"9" * 700 + b"}\n")
    previous = sys.get_int_max_str_digits()
    try:
        for limit in (640, 0):  # refused by json.loads, then taken
            sys.set_int_max_str_digits(limit)
            fast, slow = _read_all(Manifest(path), 4), _read_numbered(Manifest(path), 4)
            assert fast == slow and (fast[1] is None) == (limit == 0)
    finally:
        sys.set_int_max_str_digits(previous)


def test_good_lines_are_parsed_by_the_fast_decoder(tmp_path, monkeypatch):
    """A clean chunk never goes line by line (json.loads is not called)."""
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\n".join(GOOD[:-1] * 3) + b"\n\n")  # all but the NaN
    expected = _read_numbered(Manifest(path), 7)
    monkeypatch.setattr(manifest_module.json, "loads", None)
    assert _read_all(Manifest(path), 7) == expected


# What the C++ reader takes (the GOOD lines without "label", an image path Path would change, a
# repeated key or NaN), and lines it must leave to Python.
NATIVE = [GOOD[i] for i in (0, 1, 2, 5, 6, 8, 9, 10)] + [
    b'{"id": "\\u00e9\\/", "image": "/\\u00e9.png", "text": "\\b\\f\\n\\r\\t\\u0000"}',
    b'{"x": {"y": [[], {}, "", -0.5e-3, 0, false]}, "text": "", "id": "", "image": ""}']
DECLINED = [GOOD[i] for i in (3, 4, 7, 11, 12)] + BAD + BLANK[3:] + [
    b'{"i\\u0064": "escaped key", "id": "a", "text": "t"}',
    b'{"id": "a", "text": "t", "image": "rel\\u00e9.png"}',  # relative, escaped
    b'{"id": "a", "text": "t", "n": ' + b"[" * 65 + b"]" * 65 + b"}",
    b'{"id": "a", "text": "t", "n": 01}', b'{"id": "a", "text": "t", "n": 1.}',
    b'{"id": "a", "text": "\\x"}', b'{"id": "a", "text": "t\x01"}', b'\x0b{"id": "a", "text": "t"}',
    b'{"id": "a", "text": "\xed\xa0\x80"}', b'{"id": "a", "text": "\xc0\xaf"}',
    b'{"id": "a", "text": "t", "labels": ["x",]}', b'{"id": "a", "text": "t",}']


def test_the_native_reader_reads_as_python_and_declines_the_rest(tmp_path):
    """The C++ reader gives msgspec's records for the chunks it takes, at every shard, and
    declines (None) a chunk with one line it is not sure of."""
    prefix = str(tmp_path / "x")[:-1]
    read = manifest_module._native_reader((), prefix)
    decoder = manifest_module._line_decoder(())
    lines = NATIVE * 3 + [b"", b"  \t"]
    text = b"\n".join(lines) + b"\n"
    for index, count in ((0, 1), (1, 3), (2, 3)):
        native = read(text, 5, 7, index, count)
        assert native is not None
        assert native == manifest_module._decoded_chunk(decoder, 5, lines, text, 7, index, count,
                                                        tmp_path, prefix)
    assert read(text.rstrip(b"\n"), 1, 0, 0, 1) is not None  # a last line without its newline
    for line in DECLINED:
        assert read(NATIVE[0] + b"\n" + line + b"\n", 1, 0, 0, 1) is None, line[:50]


def test_other_formats_batch_as_numbered(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text('id,image,text,labels\na,,"x, y",p|q\nb,,z,\n"c,,bad\n')
    assert _read_all(Manifest(path), 2) == _read_numbered(Manifest(path), 2)
    assert _read_all(Manifest(path, skip_bad=True), 1) == \
        _read_numbered(Manifest(path, skip_bad=True), 1)


@pytest.mark.parametrize("threads", [1, 3])
def test_ahead_gives_results_in_order_and_the_first_error_first(threads):
    def work(item):
        if item == "bad work":
            raise KeyError("work of item 3")
        return item * 2

    def items(fail_at=None):
        for position, item in enumerate([1, 2, 3, "bad work", 5, 6]):
            if position == fail_at:
                raise ValueError(f"item {position}")
            yield item

    previous = torch.get_num_threads(), sys.getswitchinterval()
    seen = []
    with pytest.raises(ValueError, match="item 3"):  # the items' own error, after theirs
        for pair in commands._ahead(items(3), work, threads):
            seen.append(pair)
    assert seen == [(1, 2), (2, 4), (3, 6)]
    seen.clear()
    for fail_at in (4, 5, None):  # the work's error, raised before the later items' own
        with pytest.raises(KeyError, match="work of item 3"):
            for pair in commands._ahead(items(fail_at), work, threads):
                seen.append(pair)
        assert seen == [(1, 2), (2, 4), (3, 6)]
        seen.clear()
    stream = commands._ahead(iter(range(10**6)), work, threads)
    assert next(stream) == (0, 0)
    stream.close()  # left early: no thread goes on, torch's threads are back
    assert (torch.get_num_threads(), sys.getswitchinterval()) == previous
    assert not any(t.name.startswith("mmfast-classify") for t in threading.enumerate())


def _old_rows(trained, records, k, thresholds, as_csv, batch_size) -> str:
    """The rows as classify formatted them one item at a time before the streaming path."""
    names = trained.labels
    label_json = [json.dumps(label, ensure_ascii=False) for label in names]
    rows = [row for start in range(0, len(records), batch_size)
            for row in _old_chosen_labels(trained.probabilities(
                records[start:start + batch_size], None), k, thresholds)]
    out = io.StringIO(newline="")
    if as_csv:
        writer = csv.writer(out)
        writer.writerow(["id", "labels", "scores"])
        writer.writerows([record.id, "|".join(names[i] for i in chosen),
                          "|".join(f"{v:g}" for v in values)]
                         for record, (chosen, values) in zip(records, rows))
    else:
        out.writelines(f'{{"id": {json.dumps(record.id, ensure_ascii=False)}, "labels": '
                       f'[{", ".join(label_json[i] for i in chosen)}], '
                       f'"scores": {json.dumps(values)}}}\n'
                       for record, (chosen, values) in zip(records, rows))
    return out.getvalue()


def _old_chosen_labels(scores, k, thresholds):
    """Per item, as classify chose before: its label indices and their rounded scores."""
    if thresholds is None:
        values, indices = scores.topk(k, dim=1)
        counts = [k] * len(scores)
    else:
        chosen = scores >= thresholds
        values, indices = torch.where(chosen, scores, -1.0).sort(dim=1, descending=True)
        counts = chosen.sum(1).tolist()
    return [(row[:count], [round(v, 6) for v in value[:count]])
            for row, value, count in zip(indices.tolist(), values.tolist(), counts)]


def test_round6_is_pythons_round_for_float32():
    """Every float32 of [0, 1] near a rounding tie (k / 10^6 +- a few ulps, k + 0.5 halves),
    the extremes, and random values round as Python's round(v, 6); float64 goes through it."""
    near = torch.arange(0, 1_000_001, 997, dtype=torch.float64) / 1e6
    halves = (torch.arange(0, 1_000_000, 991, dtype=torch.float64) + 0.5) / 1e6
    values = torch.cat([near, halves]).float()
    ulps, up, down = [values], values, values
    for _ in range(3):
        up, down = torch.nextafter(up, torch.tensor(2.0)), torch.nextafter(down, torch.tensor(-1.0))
        ulps += [up, down]
    values = torch.cat([*ulps, torch.rand(100_000), torch.tensor(
        [0.0, -0.0, 1.0, 2.0**-7, 2.0**-20, 1e-45, 3e38, -0.5e-6, float("nan"), float("inf")])])
    expected = [round(v, 6) for v in values.tolist()]
    got = predictions.round6(values)
    assert [repr(v) for v in got] == [repr(v) for v in expected]
    doubles = torch.rand(1000, dtype=torch.float64)
    assert predictions.round6(doubles) == [round(v, 6) for v in doubles.tolist()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_score_texts_are_json_and_g_of_rounded_scores(dtype):
    """Every 37th decimal of [0, 1] and its float neighbours, random scores, and the values
    spelled otherwise (exponents, negative zero, NaN, above 1) mixed in a batch."""
    grid = (torch.arange(0, 1_000_001, 37, dtype=torch.float64) / 1e6).to(dtype)
    values = torch.cat([grid, torch.nextafter(grid, torch.tensor(2.0, dtype=dtype)),
                        torch.nextafter(grid, torch.tensor(-1.0, dtype=dtype)),
                        torch.rand(20_000).to(dtype)]).clamp(0, 1)
    odd = torch.tensor([5e-5, 1e-6, 4e-7, -0.0, float("nan"), 1.5, -0.25, float("inf")],
                       dtype=dtype)
    spelled = values[(values == 0) | (values >= 1e-4)]  # as decimals, all in one batch
    for batch in (spelled, values, torch.cat([spelled[:1000], odd])):
        rounded = [round(v, 6) for v in batch.tolist()]
        assert predictions.score_texts(batch, False) == [json.dumps(v) for v in rounded]
        assert predictions.score_texts(batch, True) == [f"{v:g}" for v in rounded]


def test_chosen_labels_of_odd_scores_are_written_as_before():
    """Scores json and {:g} write in exponent form, NaN, ties, rows with no label."""
    scores = torch.tensor([[0.5, 0.5, 0.0], [1e-7, 3e-5, 0.99999951], [float("nan"), 1.0, 0.2],
                           [0.1, 0.1, 0.1], [2.5e-4, 1.0 / 3, 0.0]])
    records = [Record(str(n), "", "", ()) for n in range(len(scores))]
    names = ("a", "b|c", 'd"e')
    label_json = [json.dumps(name) for name in names]
    for k, thresholds in ((1, None), (2, None), (3, None), (None, torch.tensor([0.3, 0.0, 2.0])),
                          (None, torch.full((3,), 0.1))):
        rows = _old_chosen_labels(scores, k, thresholds)
        expected = "".join(f'{{"id": {json.dumps(r.id)}, "labels": '
                           f'[{", ".join(label_json[i] for i in chosen)}], '
                           f'"scores": {json.dumps(values)}}}\n'
                           for r, (chosen, values) in zip(records, rows))
        ids = [r.id for r in records]
        assert predictions.rows(ids, scores, k, thresholds, names, label_json, False) == expected
        assert list(predictions.rows(ids, scores, k, thresholds, names, label_json, True)) == [
            (r.id, "|".join(names[i] for i in chosen), "|".join(f"{v:g}" for v in values))
            for r, (chosen, values) in zip(records, rows)]


def test_native_rows_are_pythons_rows():
    """The C++ writer's JSONL is the Python writer's for ids of every escape, top-k and
    thresholds; an id that is not UTF-8 is left to Python."""
    import mmfast
    from mmfast._native import _C

    generator = torch.Generator().manual_seed(0)
    scores = torch.softmax(torch.randn(len(ODD_IDS) * 4, 6, generator=generator) * 3, 1)
    scores[0, :] = 0.0  # no label over a threshold: an empty list
    scores[1, :2] = 1.0  # "1.0"
    ids = ODD_IDS * 4
    names = ('la"b', "l\\c", "mé", "plain", "new\nline", "😀")
    label_json = [predictions.json_string(name) for name in names]
    indices, values, counts = predictions.chosen_labels(scores, 2, None)
    assert _C.json_rows(ids, label_json, indices.numpy(), predictions._micro(values), None, 2) \
        is not None
    for k, thresholds in ((1, None), (3, None), (None, torch.full((6,), 0.2))):
        native = predictions.rows(ids, scores, k, thresholds, names, label_json, False)
        with mmfast.backend("reference"):
            python = predictions.rows(ids, scores, k, thresholds, names, label_json, False)
        assert native == python
    lone = ["ok", "lone \ud800"]
    indices, values, _ = predictions.chosen_labels(scores[:2], 1, None)
    assert _C.json_rows(lone, label_json, indices.numpy(), predictions._micro(values), None, 1) \
        is None


ODD_IDS = ['plain', 'quote " inside', 'comma ", " inside', 'back\\slash\\', 'tab\tnew\nline',
           'ctrl \x01\x1f', 'ünï 猫 😀', '', '], [', 'x"', '\\"', '{"id": 1}']


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    """A text model whose labels and items have every character JSON escapes."""
    root = tmp_path_factory.mktemp("stream")
    labels = ['la"b', "l\\c", "mé", "plain", "new\nline"]
    records = [Record(f"t{n}", "", f"w{n % 5} v{n % 3} filler", (labels[n % 5],))
               for n in range(60)]
    with open(root / "train.jsonl", "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record.to_json()) + "\n")
    assert main(["train", "--train", str(root / "train.jsonl"), "--model", "text",
                 "--epochs", "2", "--valid-fraction", "0", "--out", str(root / "ckpt"),
                 "--quiet"]) == 0
    items = [Record(item, "", f"w{n % 5} v{n % 2}", ()) for n, item in enumerate(ODD_IDS * 3)]
    with open(root / "items.jsonl", "w", encoding="utf-8") as out:
        for n, record in enumerate(items):
            ascii_ = n % 2 == 0  # escaped and raw UTF-8 both
            out.write(json.dumps(record.to_json(), ensure_ascii=ascii_) + "\n")
    return root, items


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("flags, k, thresholds", [
    ([], 1, None), (["--top-k", "3"], 3, None), (["--threshold", "0.2"], None, 0.2),
    (["--threshold", "0.99"], None, 0.99)])
def test_classify_writes_the_per_item_rows(odd_model, tmp_path, capsys, suffix, flags, k,
                                           thresholds):
    from mmfast import systems

    root, items = odd_model
    output = tmp_path / f"out{suffix}"
    trained = systems.load(root / "ckpt")
    if thresholds is not None:
        thresholds = torch.full((len(trained.labels),), thresholds)
    for batch_size in (5, 8192):
        assert main(["classify", "--checkpoint", str(root / "ckpt"), "--input",
                     str(root / "items.jsonl"), "--output", str(output), "--quiet",
                     "--batch-size", str(batch_size), *flags]) == 0
        expected = _old_rows(trained, items, k, thresholds, suffix == ".csv", batch_size)
        assert output.read_bytes().decode("utf-8") == expected
    capsys.readouterr()
