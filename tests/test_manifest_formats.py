"""Manifests in the formats users have: Parquet and Arrow (data frames, Hugging Face ``datasets``
exports) beside JSONL and CSV, with their own column names, read a batch at a time."""

import json

import pytest

from mmfast.cli import main
from mmfast.data import Manifest, ManifestError, Record, read_manifest, write_manifest

pa = pytest.importorskip("pyarrow")
import pyarrow.ipc  # noqa: E402
import pyarrow.parquet  # noqa: E402

RECORDS = [Record("a", "/img/a.png", "red apple", ("fruit",)),
           Record("b", "/img/b.png", "blue sky", ("sky", "blue")),
           Record("c", "", "no image", ())]


def _table(**columns):
    return pa.table(columns)


def test_parquet_and_arrow_read_as_jsonl_does(tmp_path):
    table = _table(id=[r.id for r in RECORDS], image=[r.image for r in RECORDS],
                   text=[r.text for r in RECORDS], labels=[list(r.labels) for r in RECORDS])
    pyarrow.parquet.write_table(table, tmp_path / "m.parquet", row_group_size=2)
    with pa.ipc.new_stream(tmp_path / "m.arrow", table.schema) as writer:  # datasets' layout
        for batch in table.to_batches(max_chunksize=1):
            writer.write_batch(batch)
    with pa.ipc.new_file(tmp_path / "f.arrow", table.schema) as writer:  # the file layout
        writer.write_table(table)
    for name in ("m.parquet", "m.arrow", "f.arrow"):
        assert read_manifest(tmp_path / name) == RECORDS, name
    numbered = [where for where, _ in Manifest(tmp_path / "m.parquet").numbered()]
    assert numbered == [f"{tmp_path / 'm.parquet'}:{row}" for row in (1, 2, 3)]


def test_columns_map_a_files_own_names_and_datasets_conventions(tmp_path):
    """A ``datasets`` export: no id column (the row number is the id), an integer ClassLabel,
    an Image struct with its path, other columns ignored."""
    table = _table(caption=["red apple", "blue sky"], label=[3, 0],
                   picture=[{"bytes": None, "path": "a.png"}, {"bytes": None, "path": "/b.png"}],
                   extra=[1.0, 2.0])
    pyarrow.parquet.write_table(table, tmp_path / "hf.parquet")
    columns = {"text": "caption", "labels": "label", "image": "picture"}
    assert read_manifest(tmp_path / "hf.parquet", columns=columns) == [
        Record("1", str(tmp_path / "a.png"), "red apple", ("3",)),
        Record("2", "/b.png", "blue sky", ("0",))]
    # the same mapping on JSONL and CSV files
    write_manifest(tmp_path / "m.jsonl", [])
    (tmp_path / "m.jsonl").write_text(json.dumps({"uid": "x", "caption": "hi", "tags": ["t"]})
                                      + "\n")
    assert read_manifest(tmp_path / "m.jsonl", columns={"id": "uid", "text": "caption",
                                                        "labels": "tags"}) == [
        Record("x", "", "hi", ("t",))]
    (tmp_path / "m.csv").write_text("uid,caption,tags\nx,hi,t|u\n")
    assert read_manifest(tmp_path / "m.csv", columns={"id": "uid", "text": "caption",
                                                      "labels": "tags"}) == [
        Record("x", "", "hi", ("t", "u"))]
    # a relevance manifest's one "label", in JSONL and Parquet
    (tmp_path / "pairs.jsonl").write_text('{"id": "p", "text": "t", "label": "relevant"}\n')
    pyarrow.parquet.write_table(_table(id=["p"], text=["t"], label=["relevant"]),
                                tmp_path / "pairs.parquet")
    for name in ("pairs.jsonl", "pairs.parquet"):
        assert read_manifest(tmp_path / name) == [Record("p", "", "t", ("relevant",))]
    with pytest.raises(ValueError, match=r"columns: the fields are .*, got \['caption'\]"):
        Manifest(tmp_path / "m.csv", columns={"caption": "text"})


def test_bad_columnar_files_and_rows_are_named(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="broken.parquet: not a readable .parquet file"):
        read_manifest(tmp_path / "broken.parquet")
    pyarrow.parquet.write_table(_table(id=["a", "b"], text=["ok", None]), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match=r"m.parquet:2: field 'text' must be a string"):
        read_manifest(tmp_path / "m.parquet")
    manifest = Manifest(tmp_path / "m.parquet", skip_bad=True)
    assert [r.id for r in manifest] == ["a"] and manifest.skipped == 1


def test_the_command_trains_and_classifies_from_parquet_with_its_column_names(tmp_path, capsys):
    texts = [f"w{n % 3} x{n}" for n in range(60)]
    pyarrow.parquet.write_table(_table(caption=texts, label=[f"c{n % 3}" for n in range(60)]),
                                tmp_path / "train.parquet")
    columns = "text=caption,labels=label"
    assert main(["train", "--train", str(tmp_path / "train.parquet"), "--columns", columns,
                 "--model", "text", "--out", str(tmp_path / "ckpt"), "--quiet"]) == 0
    assert main(["classify", "--checkpoint", str(tmp_path / "ckpt"), "--input",
                 str(tmp_path / "train.parquet"), "--columns", columns, "--output",
                 str(tmp_path / "out.jsonl"), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [str(n) for n in range(1, 61)]
    assert sum(row["labels"] == [f"c{n % 3}"] for n, row in enumerate(rows)) > 50
    with pytest.raises(SystemExit):
        main(["train", "--train", "t.parquet", "--columns", "caption", "--out", "o"])
    assert "expected FIELD=COLUMN pairs" in capsys.readouterr().err


def _png(color) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_encoded_images_in_a_columnar_file_are_cached_once_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("MMFAST_CACHE", str(tmp_path / "cache"))
    red, blue = _png("red"), _png("blue")
    table = _table(text=["a", "b", "c"],
                   image=[{"bytes": red, "path": None}, {"bytes": blue, "path": None},
                          {"bytes": red, "path": None}])
    pyarrow.parquet.write_table(table, tmp_path / "m.parquet")
    records = read_manifest(tmp_path / "m.parquet")
    assert records[0].image == records[2].image != records[1].image
    assert open(records[0].image, "rb").read() == red
    assert len(list((tmp_path / "cache" / "images").rglob("*"))) == 2 + 2  # 2 files, 2 dirs


def test_an_image_folder_and_column_flags_are_inputs_of_every_command(tmp_path, capsys):
    from PIL import Image

    for label, color in (("cats", "red"), ("dogs", "blue")):
        (tmp_path / "folder" / label).mkdir(parents=True)
        for n in range(6):
            Image.new("RGB", (40, 40), color).save(tmp_path / "folder" / label / f"{label}-{n}.png")
    folder, store = str(tmp_path / "folder"), str(tmp_path / "store")
    assert main(["features", "--manifest", folder, "--store", store, "--backbone", "resnet18",
                 "--weights", "none", "--image-size", "32", "--quiet"]) == 0
    assert main(["train", "--train", folder, "--store", store, "--model", "continuous",
                 "--epochs", "2", "--valid-fraction", "0", "--out", str(tmp_path / "c"),
                 "--quiet"]) == 0
    assert main(["eval", "--checkpoint", str(tmp_path / "c"), "--input", folder, "--store",
                 store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["items"] == 12
    pyarrow.parquet.write_table(_table(caption=["w0 x", "w1 y"] * 10, tag=["a", "b"] * 10),
                                tmp_path / "t.parquet")
    assert main(["train", "--train", str(tmp_path / "t.parquet"), "--text-column", "caption",
                 "--label-column", "tag", "--model", "text", "--out", str(tmp_path / "t"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "t" / "config.json").read_text())["labels"] == ["a", "b"]
