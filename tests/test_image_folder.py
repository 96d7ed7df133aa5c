"""Manifests from an ImageFolder-style tree: records, the seeded split, the ``manifest`` command."""

import os
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from mmfast.cli import main
from mmfast.data import (
    Record, image_folder_records, read_manifest, split_records, validation_split,
    write_image_folder_manifest,
)

OXYGEN_48 = Path("/usr/share/icons/oxygen/base/48x48")


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), (255, 0, 0)).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "icons"
    _png(root / "actions" / "document-open.png")
    _png(root / "actions" / "edit_copy.PNG")  # extensions match whatever their case
    _png(root / "actions" / "sub" / "go-up.png")  # found recursively, id keeps the sub-folder
    _png(root / "places" / "user-home.png")
    (root / "places" / "user-home.txt").write_text("  the home folder \n", encoding="utf-8")
    (root / "places" / "notes.txt").write_text("not an image", encoding="utf-8")
    _png(root / "places" / ".hidden" / "copy.png")
    _png(root / "stray.png")  # beside the class folders: belongs to no class
    (root / "empty").mkdir()
    return root


def test_records_follow_the_image_folder_layout(folder):
    records = image_folder_records(folder)
    assert [record.id for record in records] == [
        "actions/document-open.png", "actions/edit_copy.PNG", "actions/sub/go-up.png",
        "places/user-home.png"]
    assert [record.labels for record in records] == [("actions",)] * 3 + [("places",)]
    assert [record.text for record in records] == [
        "document open", "edit copy", "go up", "the home folder"]
    assert all(os.path.isabs(record.image) and os.path.isfile(record.image) for record in records)
    assert records.classes == ["actions", "places"] and records.skipped == 0


def test_extensions_and_dangling_links(folder):
    with pytest.raises(ValueError, match="expected images .*got none"):
        image_folder_records(folder, extensions=("jpg",))
    assert len(image_folder_records(folder, extensions="png")) == 4
    link = folder / "places" / "gone.png"
    link.symlink_to(folder / "nowhere.png")
    (folder / "actions" / "open.png").symlink_to(folder / "actions" / "document-open.png")
    records = image_folder_records(folder)
    assert records.skipped == 1 and str(link) not in {record.image for record in records}
    # a live link is an item of its own, its image path the link (not the target)
    assert str(folder / "actions" / "open.png") in {record.image for record in records}


def test_linked_folder_cycles_end(folder):
    (folder / "actions" / "sub" / "loop").symlink_to(folder / "actions", target_is_directory=True)
    assert len(image_folder_records(folder)) == 4


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "expected an existing directory, got no such path"),
    (lambda root: root.write_text("x"), "expected a directory, got a file"),
    (lambda root: _png(root / "only.png"), "expected one sub-folder per class, got none"),
    (lambda root: (root / "cats").mkdir(parents=True), "expected images .* got none"),
])
def test_bad_roots_are_named(tmp_path, make, message):
    root = tmp_path / "root"
    make(root)
    with pytest.raises(ValueError, match=message) as error:
        image_folder_records(root)
    assert str(root) in str(error.value)


def _records(count: int) -> list[Record]:
    return [Record(f"class{i % 3}/item{i}.png", f"/x/{i}.png", f"item {i}", (f"class{i % 3}",))
            for i in range(count)]


def test_split_is_seeded_and_order_free():
    records = _records(2000)
    train, heldout = split_records(records, 0.25, seed=1)
    assert sorted(train + heldout, key=lambda r: int(r.id.split("item")[1][:-4])) == records
    assert 0.22 < len(heldout) / len(records) < 0.28
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    assert {r.id for r in split_records(shuffled, 0.25, seed=1)[1]} == {r.id for r in heldout}
    assert split_records(records, 0.25, seed=1) == (train, heldout)
    assert split_records(records, 0.25, seed=2)[1] != heldout
    # a record's side does not depend on the other records
    assert {r.id for r in split_records(records[:500], 0.25, seed=1)[1]} == {
        r.id for r in heldout if r in records[:500]}
    assert split_records(records, 0.0) == (records, [])


def test_validation_split_keeps_an_images_links_together(tmp_path):
    # 300 pictures, each behind three names (an icon theme's aliases), plus text-only records
    records = []
    for picture in range(300):
        target = _png(tmp_path / "pictures" / f"{picture}.png")
        for alias in range(3):
            link = tmp_path / f"class{picture % 3}" / f"name{picture}-{alias}.png"
            link.parent.mkdir(exist_ok=True)
            link.symlink_to(target)
            records.append(Record(f"{picture}-{alias}", str(link), f"name {picture}",
                                  (f"class{picture % 3}",)))
    records += [Record(f"text{i}", None, f"text {i}", ("class0",)) for i in range(300)]
    train, valid = validation_split(records, 0.2, seed=0)
    assert 0.15 < len(valid) / len(records) < 0.25
    pictures = lambda side: {r.id.split("-")[0] for r in side if r.image}  # noqa: E731
    assert pictures(valid) and not pictures(train) & pictures(valid)
    assert any(r.image is None for r in valid) and any(r.image is None for r in train)
    # an ungrouped split would put one picture's names on both sides
    ungrouped = split_records(records, 0.2, seed=0)
    assert pictures(ungrouped[0]) & pictures(ungrouped[1])


def test_validation_split_is_the_same_wherever_the_data_is(tmp_path):
    """The same files under two roots (two users' installs, a moved folder) validate on the
    same records: the key is the file's folder and name, not its whole path."""
    def records_under(root):
        for picture in range(200):
            _png(root / f"class{picture % 4}" / f"{picture}.png")
        return [Record(f"{picture}", str(root / f"class{picture % 4}" / f"{picture}.png"),
                       f"name {picture}", (f"class{picture % 4}",)) for picture in range(200)]

    here = validation_split(records_under(tmp_path / "a"), 0.2, seed=0)
    there = validation_split(records_under(tmp_path / "b" / "deeper" / "copy"), 0.2, seed=0)
    assert [r.id for r in here[1]] == [r.id for r in there[1]] and 0 < len(here[1]) < 80


def test_validation_split_is_not_the_manifests_heldout_split(tmp_path):
    """What a manifest split with a seed left for training still yields a validation share at
    the same seed (an unsalted hash of the same key would find none of it below the fraction)."""
    root = tmp_path / "icons"
    for i in range(200):
        _png(root / f"class{i % 2}" / f"icon{i}.png")
    write_image_folder_manifest(root, tmp_path / "train.jsonl", tmp_path / "held.jsonl",
                                heldout_fraction=0.3, seed=0)
    train = read_manifest(tmp_path / "train.jsonl")
    fit, valid = validation_split(train, 0.1, seed=0)
    assert 5 <= len(valid) <= 25 and len(fit) + len(valid) == len(train)


def test_heldout_split_is_the_same_wherever_the_folder_is(tmp_path):
    """A copied or moved image folder splits into the same held-out items (the key was the
    whole real path, so every copy held out another fifth)."""
    def heldout_ids(root):
        for i in range(200):
            _png(root / f"class{i % 3}" / f"icon{i}.png")
        write_image_folder_manifest(root, root.parent / "train.jsonl", root.parent / "held.jsonl",
                                    heldout_fraction=0.2, seed=0)
        return [record.id for record in read_manifest(root.parent / "held.jsonl")]

    here = heldout_ids(tmp_path / "a" / "icons")
    assert here == heldout_ids(tmp_path / "b" / "deeper" / "icons") and 10 < len(here) < 80


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan"), True])
def test_split_refuses_bad_fractions(fraction):
    with pytest.raises(ValueError, match=r"heldout_fraction: expected a number in \[0, 1\)"):
        split_records(_records(3), fraction)


def test_write_image_folder_manifest(folder, tmp_path):
    assert write_image_folder_manifest(folder, tmp_path / "all.jsonl")[1:] == (4, 0)
    assert read_manifest(tmp_path / "all.jsonl") == image_folder_records(folder)
    _, *counts = write_image_folder_manifest(folder, tmp_path / "train.jsonl",
                                             tmp_path / "held.jsonl", heldout_fraction=0.5, seed=3)
    train, heldout = read_manifest(tmp_path / "train.jsonl"), read_manifest(tmp_path / "held.jsonl")
    assert counts == [len(train), len(heldout)] and train + heldout != []
    assert sorted(train + heldout, key=lambda r: r.id) == image_folder_records(folder)
    with pytest.raises(ValueError, match="heldout: expected a file other than out"):
        write_image_folder_manifest(folder, tmp_path / "a.jsonl", tmp_path / "a.jsonl")


def test_manifest_command(folder, tmp_path, capsys):
    out, held = tmp_path / "m" / "train.jsonl", tmp_path / "m" / "held.jsonl"
    (folder / "places" / "gone.png").symlink_to(folder / "nowhere.png")
    assert main(["manifest", "--image-folder", str(folder), "--out", str(out),
                 "--heldout", str(held), "--heldout-fraction", "0.5", "--seed", "3"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("4 records of 2 classes written to ") and str(held) in line
    assert "1 dangling symlinks skipped" in line and line.count("\n") == 1
    records = read_manifest(out) + read_manifest(held)
    assert sorted(records, key=lambda r: r.id) == image_folder_records(folder)
    assert main(["manifest", "--image-folder", str(folder), "--out", str(out)]) == 0
    assert len(read_manifest(out)) == 4 and "skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # a usage error, refused before any work
        main(["manifest", "--image-folder", str(folder), "--out", str(out), "--heldout",
              str(out)])
    assert exit_.value.code == 2
    assert "--out: expected a file other than --heldout" in capsys.readouterr().err
    assert main(["manifest", "--image-folder", str(folder), "--out", str(out), "--heldout",
                 str(held), "--heldout-fraction", "1"]) == 1
    assert re.search(r"heldout_fraction: expected a number in \[0, 1\)", capsys.readouterr().err)


@pytest.mark.skipif(not OXYGEN_48.is_dir(),
                    reason=f"{OXYGEN_48} absent (Debian package oxygen-icon-theme)")
def test_oxygen_icon_theme():
    records = image_folder_records(OXYGEN_48)
    assert len(records.classes) >= 5 and len(records) >= 300
    assert {"actions", "places"} <= set(records.classes)
    assert all(record.text and record.id.endswith(".png") for record in records)
