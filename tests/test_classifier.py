"""mmfast.Classifier / mmfast.load: drop-in training and prediction from Python, on the same
checkpoints as the command."""

import json

import numpy as np
import pytest
import torch

import mmfast
from mmfast.cli import main
from mmfast.features import ImageFeatureExtractor


def _task(n=60, seed=0):
    """Texts and 8-d image features that both carry the class (three of them)."""
    generator = np.random.default_rng(seed)
    classes = generator.integers(0, 3, n)
    texts = [f"word{c} filler{generator.integers(5)}" for c in classes]
    features = np.eye(3, 8)[classes] + 0.2 * generator.standard_normal((n, 8))
    return texts, features.astype(np.float32), [f"c{c}" for c in classes]


def test_fit_predict_save_and_load_round_trip(tmp_path):
    texts, features, labels = _task()
    clf = mmfast.Classifier("additive", epochs=5).fit(texts, features, labels)
    assert clf.labels == ("c0", "c1", "c2")
    predicted = clf.predict(texts, features)
    assert np.mean([p[0] == y for p, y in zip(predicted, labels)]) > 0.9
    scores = clf.scores(texts, features)
    torch.testing.assert_close(scores.sum(1), torch.ones(len(texts)))
    clf.save(tmp_path / "ckpt")
    loaded = mmfast.load(tmp_path / "ckpt")
    torch.testing.assert_close(loaded.scores(texts, features), scores)
    assert loaded.predict(texts[:2], features[:2], top_k=2) == [
        [clf.labels[i] for i in row.topk(2).indices] for row in scores[:2]]


def test_refit_trains_on_both_sets_for_the_epochs_validation_kept():
    texts, features, labels = _task()
    valid = _task(30, seed=1)
    with pytest.raises(ValueError, match="refit needs valid="):
        mmfast.Classifier("additive", epochs=4).fit(texts, features, labels, refit=True)
    clf = mmfast.Classifier("additive", epochs=4).fit(texts, features, labels, valid, refit=True)
    refit = clf.trained.stats["refit"]
    assert refit["items"] == 90 and refit["epochs"] == clf.trained.stats["best_epoch"]
    assert clf.trained.recipe.stop_epoch == refit["epochs"] and clf.trained.recipe.epochs == 4


def test_text_model_and_multilabel_targets():
    texts, _, labels = _task()
    tags = [[label, "shared"] if i % 2 else [label] for i, label in enumerate(labels)]
    clf = mmfast.Classifier("text", epochs=10).fit(texts, None, tags)
    assert clf.trained.multilabel and "shared" in clf.labels
    # the task kind picks the default recipe: the text model's multi-label lr, its own epochs
    assert clf.recipe == mmfast.defaults.Recipe.default("text", True, epochs=10)
    assert clf.recipe.lr != mmfast.defaults.Recipe.default("text", False, num_labels=100).lr
    chosen = clf.predict(texts, threshold=0.5)
    assert all(all(label in clf.labels for label in row) for row in chosen)
    assert np.mean([labels[i] in row for i, row in enumerate(chosen)]) > 0.8


def test_images_as_files_pil_images_and_tensors_give_the_same_features(tmp_path):
    """Every image form goes through the extractor the checkpoint records, so a loaded model
    sees the features it was trained on, and `mmfast classify` on the same checkpoint agrees."""
    from PIL import Image

    texts, _, labels = _task(n=12)
    colours = {"c0": (230, 20, 20), "c1": (20, 230, 20), "c2": (20, 20, 230)}
    paths = []
    for i, label in enumerate(labels):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (40, 40), colours[label]).save(paths[-1])
    extractor = ImageFeatureExtractor(image_size=32)
    clf = mmfast.Classifier("continuous", extractor=extractor, epochs=3).fit(texts, paths, labels)
    clf.save(tmp_path / "ckpt")
    loaded = mmfast.load(tmp_path / "ckpt")
    pil = [Image.open(path) for path in paths]
    tensors = [torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
               for image in pil]
    by_path = loaded.scores(texts, paths)
    torch.testing.assert_close(loaded.scores(texts, pil), by_path)
    torch.testing.assert_close(loaded.scores(texts, tensors), by_path, atol=1e-3, rtol=0)
    torch.testing.assert_close(loaded.scores(texts, extractor(paths, progress=False)), by_path)

    manifest, output = tmp_path / "items.jsonl", tmp_path / "out.jsonl"
    manifest.write_text("".join(json.dumps({"id": str(i), "image": path, "text": text})
                                + "\n" for i, (path, text) in enumerate(zip(paths, texts))))
    assert main(["classify", "--checkpoint", str(tmp_path / "ckpt"), "--input", str(manifest),
                 "--output", str(output), "--quiet"]) == 0
    command = [json.loads(line)["labels"] for line in output.read_text().splitlines()]
    assert command == loaded.predict(texts, paths)


def test_bad_arguments_are_clear():
    texts, features, labels = _task(n=6)
    with pytest.raises(ValueError, match="not trained yet"):
        mmfast.Classifier().predict(texts, features)
    with pytest.raises(ValueError, match="images are needed by the 'additive' system"):
        mmfast.Classifier().fit(texts, None, labels)
    with pytest.raises(ValueError, match=r"images must have one entry per text \(6\), got 5"):
        mmfast.Classifier().fit(texts, features[:5], labels)
    with pytest.raises(ValueError, match="6 texts but 2 labels"):
        mmfast.Classifier().fit(texts, features, labels[:2])
    with pytest.raises(ValueError, match="system must be one of .*'cacnet'.*, got 'resnet'"):
        mmfast.Classifier("resnet")
    clf = mmfast.Classifier("additive", epochs=1).fit(texts, features, labels)
    with pytest.raises(ValueError, match="top_k must be an integer >= 1, got 0"):
        clf.predict(texts, features, top_k=0)
    with pytest.raises(ValueError, match="must be paths, PIL images, tensors"):
        clf.predict(texts[:1], [3.5])
    with pytest.raises(ValueError, match="no image extractor is recorded"):
        clf.predict(texts[:1], ["x.png"])  # trained on features: no extractor to run
