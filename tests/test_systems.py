"""The registry of systems (mmfast.systems): every system trains, classifies and evaluates from
the command and from the Python API, on one code path, and its checkpoint says what it is."""

import dataclasses
import json
import types

import numpy as np
import pytest
import torch

import mmfast
from mmfast import systems
from mmfast.cli import main
from mmfast.data import (FeatureStore, Record, emoji_dataset, read_manifest, relevance_records,
                         write_manifest)
from mmfast.features import store_features
from mmfast.features.text_features import TextFeatures

NEW_SYSTEMS = ("cacnet", "joint_ae", "crossmodal_ae_i", "crossmodal_ae_ii")
FAST = {"cacnet": ["--epochs", "3", "--text-dim", "16", "--image-dim", "16", "--dim", "32"],
        "joint_ae": ["--epochs", "3", "--text-dim", "16", "--image-dim", "16"],
        "crossmodal_ae_i": ["--epochs", "3", "--text-dim", "16", "--image-dim", "16"],
        "crossmodal_ae_ii": ["--epochs", "3", "--text-dim", "16", "--image-dim", "16"],
        "mlp": ["--epochs", "3", "--dim", "32"], "text": ["--epochs", "3"],
        "ananet": ["--epochs", "2", "--dim", "16", "--text-dim", "8"]}
FAST.update({name: ["--epochs", "2", "--dim", "16"] for name in (
    "continuous", "additive", "max", "gated", "bilinear", "bilinear_gated")})
FAST.update({name: ["--epochs", "2", "--subvectors", "4", "--centroids", "8"]
             for name in ("pq", "rspq")})
FAST.update({name: FAST["ananet"] for name in (
    "ananet_alignment", "ananet_association", "ananet_concat")})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Small group (single-label) and tags (multi-label) manifests of the demo data and one
    feature store of their images (an untrained ResNet-18 at 32 px: fast, not informative)."""
    root = tmp_path_factory.mktemp("systems")
    paths = {}
    for task, step in (("group", 12), ("tags", 12)):
        data = emoji_dataset(task, root=root / "cache")
        for split, records in (("train", read_manifest(data.train)[::step]),
                               ("heldout", read_manifest(data.heldout)[::step])):
            paths[task, split] = root / f"{task}-{split}.jsonl"
            write_manifest(paths[task, split], records)
    store = root / "store"
    with pytest.warns(UserWarning, match="repeated ids"):  # the two tasks share their images
        assert main(["features", *(arg for path in paths.values()
                                    for arg in ("--manifest", str(path))),
                     "--store", str(store), "--backbone", "resnet18", "--weights", "none",
                     "--image-size", "32", "--quiet"]) == 0
    # image-text relevance pairs (own, same-group and other-group captions) and their regions
    data = emoji_dataset("group", root=root / "cache")
    for split, records in (("train", read_manifest(data.train)[::40]),
                           ("heldout", read_manifest(data.heldout)[::40])):
        paths["relevance", split] = root / f"relevance-{split}.jsonl"
        write_manifest(paths["relevance", split], relevance_records(records))
    regions = root / "regions"
    assert main(["features", "--manifest", str(paths["relevance", "train"]), "--manifest",
                 str(paths["relevance", "heldout"]), "--store", str(regions), "--regions",
                 "grid", "--image-size", "64", "--quiet"]) == 0
    return paths, {"pooled": store, "regions": regions}, root


# every system of the registry, on the task kinds it takes
CASES = [(name, task) for name, system in systems.SYSTEMS.items()
         for task in (("relevance",) if system.tasks == (systems.RELEVANCE,) else
                      ("group", "tags"))]


@pytest.mark.parametrize(("system", "task"), CASES)
def test_every_system_trains_classifies_and_evaluates_from_the_command(demo, system, task,
                                                                       capsys):
    paths, stores, root = demo
    store = stores["regions" if task == "relevance" else "pooled"]
    checkpoint = root / f"{system}-{task}"
    store_args = [] if system == "text" else ["--store", str(store)]  # text reads no image
    assert main(["train", "--train", str(paths[task, "train"]), *store_args, "--out",
                 str(checkpoint), "--model", system, *FAST[system], "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"trained {system}" in out and "kept epoch" in out
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["system"] == system and config["format"] == systems.CHECKPOINT_FORMAT
    assert config["multilabel"] == (task == "tags") and config["training"]["valid_items"] > 0
    # an "auto" setting is recorded as what validation chose
    assert config["recipe"].get("text_features") != "auto" and config["recipe"].get("gate") != \
        "auto"

    output = root / f"{system}-{task}.jsonl"
    assert main(["classify", "--checkpoint", str(checkpoint), "--input",
                 str(paths[task, "heldout"]), *store_args, "--output", str(output),
                 "--top-k", "3", "--quiet"]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    heldout = read_manifest(paths[task, "heldout"])
    assert [row["id"] for row in rows] == [record.id for record in heldout]
    assert all(len(row["labels"]) == 3 for row in rows)

    assert main(["eval", "--checkpoint", str(checkpoint), "--input",
                 str(paths[task, "heldout"]), *store_args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["items"] == len(heldout) and report["multilabel"] == (task == "tags")

    # the Python API loads the same checkpoint and ranks the same labels first
    from mmfast.data import FeatureStore
    from mmfast.features import store_features

    classifier = mmfast.load(checkpoint)
    images = None if system == "text" else store_features(FeatureStore(store), heldout)
    predicted = classifier.predict([record.text for record in heldout], images, top_k=3)
    assert predicted == [row["labels"] for row in rows]


def _learnable(n: int, seed: int, multilabel: bool = False):
    """Items whose class shows in both their words and their image features."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.arange(n) % 3
    words = [f"w{int(c)} filler{int(r)}" for c, r in
             zip(classes, torch.randint(50, (n,), generator=generator))]
    labels = [[f"c{int(c)}", "all"] if multilabel else f"c{int(c)}" for c in classes]
    image = torch.nn.functional.one_hot(classes, 8).float() + 0.3 * torch.randn(
        n, 8, generator=generator)
    return words, image.numpy(), labels


@pytest.mark.parametrize("system", NEW_SYSTEMS)
@pytest.mark.parametrize("multilabel", [False, True])
def test_new_systems_learn_a_learnable_task(system, multilabel, tmp_path):
    """Far above chance on held-out items, through ``mmfast.Classifier``; a label every item has
    (no regression to fit) is scored certain; the saved checkpoint predicts the same."""
    texts, image, labels = _learnable(240, 0, multilabel)
    test_texts, test_image, test_labels = _learnable(90, 1, multilabel)
    # hashed text: Word2Vec's a/(a + p(w)) weights would all but drop the class words, which
    # are the most frequent words here
    settings = {"cacnet": {"dim": 32}}.get(system, {})
    classifier = mmfast.Classifier(system, image_dim=8, text_dim=32, text_features="hashed",
                                   epochs=15, **settings)
    classifier.fit(texts, image, labels, valid=(test_texts[:30], test_image[:30],
                                                test_labels[:30]))
    predicted = classifier.predict(test_texts, test_image, top_k=2 if multilabel else 1)
    truth = [[label] if isinstance(label, str) else label for label in test_labels]
    hits = np.mean([set(p) == set(t) for p, t in zip(predicted, truth)])
    assert hits > 0.9, (system, hits)
    classifier.save(tmp_path / "ckpt")
    loaded = mmfast.load(tmp_path / "ckpt")
    torch.testing.assert_close(loaded.scores(test_texts, test_image),
                               classifier.scores(test_texts, test_image))
    assert loaded.trained.system == system


@pytest.mark.parametrize("system", ["cacnet", "joint_ae", "ananet"])
def test_autotune_searches_every_systems_recipe(system):
    texts, image, labels = _learnable(120, 0)
    if system == "ananet":  # regions: the image vector spread over 2 cells
        image = np.stack([image, image[:, ::-1]], axis=1)
    records = [Record(str(n), "", text, (label,)) for n, (text, label) in
               enumerate(zip(texts, labels))]
    base = systems.get(system).default_recipe(epochs=2, **(
        {"dim": 16, "text_dim": 8} if system == "ananet" else {"image_dim": 4, "text_dim": 8}))
    result = mmfast.train.autotune(system, records[:90], image[:90], ["c0", "c1", "c2"], False,
                                   (records[90:], image[90:]), max_trials=3, base=base)
    first = result.trials[0].recipe  # as trained: a probe penalty resolved on validation
    assert len(result.trials) == 3 and (first.lr, first.epochs) == (base.lr, base.epochs)
    assert len({str(trial.recipe) for trial in result.trials}) == 3
    assert result.score == max(trial.score for trial in result.trials)
    assert result.trained.system == system
    assert result.trained.stats["autotune"]["trials"] == 3


def test_checkpoints_of_unknown_systems_or_newer_formats_are_refused(demo, tmp_path):
    texts, image, labels = _learnable(60, 0)
    classifier = mmfast.Classifier("crossmodal_ae_ii", epochs=1, image_dim=4, text_dim=8)
    classifier.fit(texts, image, labels).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "format": 99}))
    with pytest.raises(ValueError, match="format 99 was written by a newer mmfast"):
        mmfast.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "system": "resnet"}))
    with pytest.raises(ValueError, match=r"expected a checkpoint of one of mmfast's systems "
                                         r"\(.*'cacnet'.*\), got \"resnet\""):
        mmfast.load(tmp_path)


def test_command_refuses_settings_a_system_does_not_read(demo, capsys):
    paths, stores, root = demo
    store = stores["pooled"]
    base = ["train", "--train", str(paths["group", "train"]), "--out", str(root / "x")]
    for argv, message in (
            (["--model", "crossmodal_ae_i", "--mu", "3", "--store", str(store)],
             "--mu: the crossmodal_ae_i system has no such setting (it is one of joint_ae, "
             "crossmodal_ae_ii)"),
            (["--model", "additive", "--alpha", "2", "--store", str(store)],
             "--alpha: the additive system has no such setting (it is one of pq, rspq)"),
            (["--model", "pq", "--text-lr-scale", "2", "--store", str(store)],
             "--text-lr-scale: the pq system has no such setting (it is one of continuous, "
             "additive, max, gated, bilinear, bilinear_gated, mlp)"),
            (["--model", "bilinear", "--text-lr-scale", "fast", "--store", str(store)],
             "--text-lr-scale: expected a finite number > 0 or auto, got 'fast'"),
            (["--model", "cacnet", "--dim", "33", "--store", str(store)], "expected an even"),
            (["--model", "joint_ae", "--l2", "0", "--store", str(store)],
             "--l2: expected a finite number > 0"),
            (["--model", "cacnet", "--text-features", "bogus", "--store", str(store)],
             "--text-features: expected one of auto, hashed, word2vec, glove, glove:PATH, "
             "sentence:PATH, got 'bogus'")):
        with pytest.raises(SystemExit) as exit:
            main(base + argv)
        assert exit.value.code == 2
        assert message in capsys.readouterr().err
    assert main(base + ["--model", "cacnet"]) == 1
    assert ("--store: the cacnet system reads image features" in capsys.readouterr().err)


@pytest.mark.parametrize("system", ["gated", "cacnet"])
def test_refit_trains_the_chosen_recipe_on_both_splits_for_the_kept_epochs(demo, system):
    """The "auto" choices stay as validation made them (gated's gate, cacnet's text features),
    the epochs are the kept one's, and the run is a plain fit of the two splits together."""
    paths, stores, _ = demo
    store = FeatureStore(stores["pooled"])
    records = read_manifest(paths["group", "train"])
    labels = sorted({label for record in records for label in record.labels})
    train, valid = (records[:-12], store_features(store, records[:-12])), \
        (records[-12:], store_features(store, records[-12:]))
    entry = systems.get(system)
    recipe = entry.default_recipe(False, len(labels), epochs=6, seed=1)
    trained = entry.fit(recipe, train, labels, False, valid)
    refitted = entry.refit(trained, train, valid)
    chosen = trained.recipe
    assert "auto" not in (getattr(chosen, "gate", None), getattr(chosen, "text_features", None))
    assert refitted.recipe == dataclasses.replace(chosen, stop_epoch=trained.stats["best_epoch"])
    assert refitted.stats["refit"]["epochs"] == trained.stats["best_epoch"]
    assert refitted.stats["refit"]["items"] == len(records)
    assert refitted.stats["valid_score"] == trained.stats["valid_score"]
    by_hand = entry.fit(refitted.recipe, (records, store_features(store, records)), labels,
                        False)
    for mine, theirs in zip(refitted.model.state_dict().values(),
                            by_hand.model.state_dict().values()):
        torch.testing.assert_close(mine, theirs)
    assert not torch.equal(refitted.logits(*valid), trained.logits(*valid))


def test_train_refit_records_the_refit_and_needs_a_validation_split(demo, capsys):
    paths, stores, root = demo
    base = ["train", "--train", str(paths["tags", "train"]), "--store", str(stores["pooled"]),
            "--model", "text", "--epochs", "4", "--refit", "--quiet"]
    assert main(base + ["--out", str(root / "refit")]) == 0
    out = capsys.readouterr().out
    config = json.loads((root / "refit" / "config.json").read_text())
    training, items = config["training"], len(read_manifest(paths["tags", "train"]))
    assert training["refit"]["items"] == items and training["valid_items"] > 0
    assert training["refit"]["epochs"] == training["best_epoch"] == config["recipe"]["stop_epoch"]
    assert config["recipe"]["epochs"] == 4  # the schedule's, as the selection run's
    assert (f"refit on the {items} training and validation items up to epoch "
            f"{training['best_epoch']} of 4 in ") in out
    assert main(base + ["--out", str(root / "x"), "--valid-fraction", "0"]) == 1
    assert capsys.readouterr().err == ("mmfast train: --refit needs a validation split: pass "
                                       "--valid or a --valid-fraction above 0\n")


def test_refit_pays_from_a_quarter_of_the_epochs():
    """Unasked, a refit follows the kept epoch: from a quarter of the schedule on it gained
    held out, before it it lost; a system that chooses no epoch is not refit."""
    kiela, autoencoder = systems.get("additive"), systems.get("joint_ae")
    for best_epoch, pays in ((19, False), (20, True), (80, True)):
        kept = types.SimpleNamespace(recipe=kiela.default_recipe(epochs=80),
                                     stats={"best_epoch": best_epoch})
        assert kiela.refit_pays(kept) is pays
    assert not autoencoder.refit_pays(types.SimpleNamespace(
        recipe=autoencoder.default_recipe(epochs=8), stats={"best_epoch": 8}))


def test_train_refits_unasked_where_the_kept_epoch_says_it_pays(demo, capsys, monkeypatch):
    """Without --refit a held-out share of --train is given back where ``refit_pays``; a
    --valid set the user keeps apart is not, nor with --no-refit."""
    paths, stores, root = demo
    base = ["train", "--train", str(paths["group", "train"]), "--store", str(stores["pooled"]),
            "--model", "additive", "--epochs", "2", "--dim", "16", "--quiet"]
    items = len(read_manifest(paths["group", "train"]))

    def trained(out, *flags):
        assert main(base + ["--out", str(root / out), *flags]) == 0
        return json.loads((root / out / "config.json").read_text())["training"], \
            capsys.readouterr().out

    for pays in (True, False):
        monkeypatch.setattr(systems.System, "refit_pays", lambda self, fitted: pays)
        training, out = trained(f"unasked-{pays}")
        assert ("refit" in training) is pays
        if pays:
            assert training["refit"]["items"] == items
        else:
            assert ("no refit: the kept epoch is in the first 25% of the 2 epochs, where a "
                    "refit does not find it again (--refit forces one)") in out
        for out, flags in (("asked-not", ["--no-refit"]),
                           ("apart", ["--valid", str(paths["group", "train"])])):
            training, printed = trained(f"{out}-{pays}", *flags)
            assert "refit" not in training and "refit " not in printed


def test_models_lists_every_system(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["system"] for row in rows] == list(systems.SYSTEMS)
    assert {row["paper"] for row in rows} >= {"000 CACNet", "002 autoencoders",
                                              "003 Kiela et al.", "baseline"}


def test_hashed_text_features_are_deterministic_signed_and_normalized():
    features = TextFeatures.fit("hashed", [], dim=64, ngrams=2)
    x = features(["red apple pie", "red apple pie", "", "pie red apple"])
    np.testing.assert_array_equal(x[0], x[1])
    np.testing.assert_allclose(np.linalg.norm(x[[0, 3]], axis=1), 1.0, rtol=1e-6)
    assert not x[2].any() and (x < 0).any() and (x > 0).any()
    assert not np.array_equal(x[0], x[3])  # word order shows in the bigrams
    restored = TextFeatures.from_state(features.config(), features.tensors())
    np.testing.assert_array_equal(restored(["red apple pie"]), x[:1])


def test_word2vec_and_glove_text_features_round_trip(tmp_path):
    texts = ["red apple pie", "green apple", "blue sky", "red sky at night"] * 5
    word2vec = TextFeatures.fit("word2vec", texts, dim=8)
    restored = TextFeatures.from_state(json.loads(json.dumps(word2vec.config())),
                                       word2vec.tensors())
    np.testing.assert_allclose(restored(texts), word2vec(texts))
    assert word2vec(["unknown words only"]).any() == False  # noqa: E712 (out of vocabulary)
    glove = tmp_path / "vectors.txt"
    glove.write_text("red 1 0 0\napple 0 1 0\nsky 0 0 1\n")
    features = TextFeatures.fit(f"glove:{glove}", texts)
    assert features.dim == 3 and features(["red"])[0, 0] > 0
    restored = TextFeatures.from_state(features.config(), features.tensors())
    np.testing.assert_allclose(restored(texts), features(texts))
    for kind in ("bag", "hashed:x", "sentence"):
        with pytest.raises(ValueError, match="text features must be one of"):
            TextFeatures.fit(kind, texts)
    with pytest.raises(FileNotFoundError, match="glove:nowhere.txt"):
        TextFeatures.fit("glove:nowhere.txt", texts)


def test_each_system_takes_the_image_features_it_reads():
    systems.get("ananet").check_image(np.zeros((2, 4, 5)))
    systems.get("cacnet").check_image(np.zeros((2, 5)))
    systems.get("text").check_image(None)
    with pytest.raises(ValueError, match=r"the ananet system reads region features \[N, Kr, D\] "
                                         r"\(a store of mmfast features --regions grid\), got "
                                         r"pooled features of shape \(2, 5\)"):
        systems.get("ananet").check_image(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"the cacnet system reads pooled image features "
                                         r"\[N, D\] \(a store of mmfast features\), got region "
                                         r"features of shape \(2, 4, 5\)"):
        systems.get("cacnet").check_image(np.zeros((2, 4, 5)))


def test_records_without_image_features_are_refused_by_image_systems():
    texts, image, labels = _learnable(30, 0)
    records = [Record(str(n), "", text, (label,)) for n, (text, label) in
               enumerate(zip(texts, labels))]
    for name in NEW_SYSTEMS:
        system = systems.get(name)
        with pytest.raises(ValueError, match=f"the {name} system reads pooled image features"):
            system.fit(system.default_recipe(epochs=1), (records, None), ["c0", "c1", "c2"],
                       False)


def test_paper_tables_say_whether_the_papers_orderings_hold():
    from mmfast.experiments.kiela_demo import orderings

    scores = {"text": 0.6, "continuous": 0.7, "additive": 0.8, "max": 0.79, "gated": 0.75,
              "bilinear_gated": 0.81, "pq": 0.72, "rspq": 0.74}
    assert orderings(scores) == [
        "paper's ordering: the fusions (additive, max, gated, bilinear-gated) beat text-only and "
        "image-only: holds here",
        "paper's ordering: discretized image tokens (PQ, RSPQ) beat text-only: holds here",
        "paper's ordering: bilinear-gated is the best model (here: bilinear_gated): holds here"]
    scores.update(pq=0.5, gated=0.65)
    assert [line.endswith("does NOT hold here") for line in orderings(scores)] == [
        True, True, False]
    assert orderings({"text": 0.5}) == []  # nothing to compare


def test_detector_regions_are_stored_from_a_local_faster_rcnn(tmp_path, capsys):
    """mmfast features --regions detector: 36 box-head features per image from a local
    state-dict file (random weights here: the shapes and the plumbing, not the meaning)."""
    from PIL import Image
    from safetensors.torch import save_file
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from mmfast.data import FeatureStore

    torch.manual_seed(0)
    weights = tmp_path / "frcnn.safetensors"
    save_file({name: value.contiguous() for name, value in
               fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict().items()},
              str(weights))
    records = []
    for n, color in enumerate(("red", "blue")):
        Image.new("RGB", (50, 40), color).save(tmp_path / f"{n}.png")
        records.append(Record(str(n), str(tmp_path / f"{n}.png"), "x", ("a",)))
    write_manifest(tmp_path / "m.jsonl", records)
    base = ["features", "--manifest", str(tmp_path / "m.jsonl"), "--regions", "detector",
            "--image-size", "64", "--quiet"]
    assert main(base + ["--store", str(tmp_path / "s")]) == 1
    assert "--regions detector: --weights must name a local state-dict" in capsys.readouterr().err
    assert main(base + ["--store", str(tmp_path / "s"), "--weights", str(weights)]) == 0
    store = FeatureStore(tmp_path / "s")
    assert store["image"].shape == (2, 36, 1024)
    assert store.meta["extractor"]["regions"] == "detector"
    systems.get("ananet").check_image(store["image"])


def test_a_pairs_file_reads_the_regions_of_the_images_it_names(demo, capsys):
    """A relevance manifest of pairs naming their images by item id (``image_id``): the regions
    are extracted once from the items' manifest, and ananet trains and classifies the pairs."""
    paths, stores, root = demo
    items = read_manifest(paths["relevance", "train"])
    pairs = [Record(f"p{n}", "", record.text, record.labels, record.id.split("~")[0])
             for n, record in enumerate(items)]
    images = {record.id.split("~")[0]: record.image for record in items}
    write_manifest(root / "images.jsonl", [Record(item, image, "") for item, image in
                                           images.items()])
    write_manifest(root / "pairs.jsonl", pairs)
    assert read_manifest(root / "pairs.jsonl") == pairs
    store = str(root / "pair-regions")
    for manifest in ("images.jsonl", "pairs.jsonl"):  # the pairs add nothing to extract
        assert main(["features", "--manifest", str(root / manifest), "--store", store,
                     "--regions", "grid", "--image-size", "64", "--quiet"]) == 0
    assert f"{len(images)} items in" in capsys.readouterr().out.splitlines()[-1]
    assert main(["train", "--train", str(root / "pairs.jsonl"), "--store", store, "--model",
                 "ananet", *FAST["ananet"], "--out", str(root / "pairs-ckpt"), "--quiet"]) == 0
    assert main(["eval", "--checkpoint", str(root / "pairs-ckpt"), "--input",
                 str(root / "pairs.jsonl"), "--store", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["items"] == len(pairs)
