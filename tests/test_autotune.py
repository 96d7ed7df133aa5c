"""fastText-style autotune of paper-003 recipes (mmfast.train.autotune) on a tiny task."""

import json
import math
import random
import time

import numpy as np
import pytest
import torch

from mmfast.data import Record
from mmfast.systems.autotune import Choice, autotune, search_space
from mmfast.defaults import MODELS, Recipe

CLASSES = ("red", "green", "blue")
IMAGE_DIM = 16


@pytest.fixture(autouse=True)
def one_thread():
    """Exact reproducibility needs one thread: the fused path's Hogwild threads race."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _task(n: int, seed: int, multilabel: bool = False):
    """Class c: two words, each c's own (else another class's) with probability 0.6, and one
    shared; image: class c's direction plus noise. Neither alone tells every class. Multi-label
    items also carry "big" or "small", told by a word (or its opposite) and image dimension 8."""
    rng = random.Random(seed)
    records, image = [], np.zeros((n, IMAGE_DIM), np.float32)
    for i in range(n):
        label, big = rng.randrange(len(CLASSES)), rng.random() < 0.5
        words = [f"{CLASSES[_noisy(rng, label, 3)]}{rng.randrange(4)}" for _ in range(2)]
        words.append(f"any{rng.randrange(6)}")
        labels = (CLASSES[label],)
        if multilabel:
            words.append(("huge", "tiny")[_noisy(rng, int(not big), 2)])
            labels += ("big" if big else "small",)
            image[i, 8] = 1.0 if big else -1.0
        image[i, label] += 1.0
        image[i] += np.asarray([rng.gauss(0, 0.8) for _ in range(IMAGE_DIM)], np.float32)
        records.append(Record(f"{seed}-{i}", f"{i}.png", " ".join(words), labels))
    return records, image


def _noisy(rng: random.Random, value: int, values: int) -> int:
    return value if rng.random() < 0.6 else rng.randrange(values)


def _data(multilabel: bool = False):
    train, valid = _task(120, 0, multilabel), _task(60, 1, multilabel)
    labels = CLASSES + (("big", "small") if multilabel else ())
    return train, valid, labels


def _run(model, seed=0, max_trials=5, multilabel=False, **kwargs):
    (records, image), valid, labels = _data(multilabel)
    return autotune(model, records, image, labels, multilabel, valid, seed=seed,
                    max_trials=max_trials, **kwargs)


def _trace(result):
    return [(trial.recipe, trial.score, trial.best_epoch) for trial in result.trials]


@pytest.mark.parametrize("model", ["text", "additive"])  # the fused path and autograd
def test_max_trials_is_reproducible_by_seed(model):
    # a budget no run reaches, so the trial count alone ends each one, on a busy machine too
    first, again, other = (_run(model, seed=seed, duration=3600) for seed in (3, 3, 4))
    assert len(first.trials) == 5
    assert _trace(first) == _trace(again)
    assert first.recipe == again.recipe and first.score == again.score
    # trial 0 is the base recipe whatever the seed; the searches part after it
    assert first.trials[0].recipe == other.trials[0].recipe == Recipe.default(model, False,
                                                                               len(CLASSES))
    assert [t.recipe for t in first.trials[1:]] != [t.recipe for t in other.trials[1:]]


@pytest.mark.parametrize("model", ["pq", "bilinear_gated"])
def test_result_is_the_best_trial_and_beats_the_base(model):
    base = Recipe(model=model, epochs=5, lr=0.1, seed=7)
    result = _run(model, max_trials=6, base=base)
    scores = [trial.score for trial in result.trials]
    best = scores.index(max(scores))  # the first of equal scores
    assert result.score == max(scores) >= result.trials[0].score
    assert result.trials[0].recipe == base
    assert result.recipe == result.trials[best].recipe == result.trained.recipe
    stats = result.trained.stats
    assert stats["valid_score"] == result.score and result.metric == stats["metric"] == "accuracy"
    # the model of the best trial as trained: its planned epochs, the weights of its best one
    assert stats["best_epoch"] == result.trials[best].best_epoch <= result.recipe.epochs
    summary = json.loads(json.dumps(stats["autotune"]))
    assert summary["trials"] == 6 and summary["best_trial"] == best
    assert summary["best_score"] == result.score and summary["metric"] == "accuracy"
    # only the fields the model uses move; the seed stays the base's
    fixed = {"patience", "seed", "model"} | ({"gate", "batch_size"} if model == "pq" else
                                             {"alpha", "subvectors", "centroids", "repetitions"})
    for trial in result.trials:
        assert all(getattr(trial.recipe, name) == getattr(base, name) for name in fixed)
    assert result.score > 0.6  # chance is 1/3


def test_search_space_fits_the_model_and_data():
    assert set(search_space("continuous", 1280, 500)) == {"lr", "epochs", "dim", "batch_size",
                                                         "weight_decay"}
    assert set(search_space("text", 1280, 500)) == {"lr", "epochs", "dim", "ngrams", "buckets"}
    assert "gate" in search_space("bilinear_gated", 1280, 500)
    rspq = search_space("rspq", 1280, 100)
    assert set(rspq["subvectors"].values) == {2, 4, 8, 16, 32, 64}
    assert rspq["centroids"].values == (16, 32, 64) and "repetitions" in rspq
    assert search_space("pq", 12, 100)["subvectors"].values == (2, 4)
    # every model's default learning rate lies inside its range
    for model in MODELS:
        lr = search_space(model, 10, 10)["lr"]
        assert lr.low <= Recipe.default(model).lr <= lr.high, model
    softmax_lr, ova_lr = (search_space("pq", 10, 10, multilabel)["lr"] for multilabel in (0, 1))
    assert ova_lr.high < softmax_lr.high  # one-vs-all steps sum every label's gradient
    rng = random.Random(0)
    for model in MODELS:
        for _ in range(20):
            recipe = Recipe(model=model, **{name: kind.sample(rng) for name, kind
                                            in search_space(model, 1280, 100).items()})
            lr = search_space(model, 1280, 100)["lr"]
            assert lr.low <= recipe.lr <= lr.high and 5 <= recipe.epochs <= 100
            assert 1280 % recipe.subvectors == 0 and recipe.centroids <= 100
    # every default recipe can be perturbed, its values on a field's grid or off it (the mlp's
    # weight decay 0.01 once crashed the search beside a grid value of 0: log(0 / 0.01))
    for model in MODELS:
        for multilabel in (False, True):
            base = Recipe.default(model)
            for name, kind in search_space(model, 1280, 100, multilabel).items():
                for spread in (1.0, 0.0):
                    kind.perturb(getattr(base, name), rng, spread)
    assert Choice((0.0, 1e-3, 1e-2)).perturb(0.02, random.Random(0), 0.0) == 1e-2


def test_duration_bounds_the_search():
    start = time.perf_counter()
    result = _run("additive", max_trials=None, duration=2.0)
    elapsed = time.perf_counter() - start
    # no trial starts unless the mean trial still fits: at most the last one runs over
    assert elapsed <= 2.0 + result.trials[-1].seconds + 1.0
    assert result.trained.stats["autotune"]["seconds"] <= elapsed
    single = _run("additive", max_trials=None, duration=1e-3)
    assert len(single.trials) == 1 and single.recipe == Recipe.default("additive")


def test_failing_trials_are_skipped():
    base = Recipe(model="pq", centroids=1000)  # k-means needs 1000 items; there are 120
    result = _run("pq", max_trials=4, base=base)
    failed = result.trials[0]
    assert failed.score == -math.inf and failed.best_epoch == 0 and "1000" in failed.error
    assert all(t.error is None and t.score > -math.inf for t in result.trials[1:])
    assert result.score == max(t.score for t in result.trials) > 0.4  # chance: 1/3
    assert result.trained.stats["autotune"]["failed"] == 1


def test_multilabel_tunes_mean_average_precision():
    result = _run("pq", max_trials=4, multilabel=True)
    assert result.metric == result.trained.stats["metric"] == "mAP"
    assert result.trained.multilabel and result.score >= result.trials[0].score
    assert 0.7 < result.score <= 1.0


def test_arguments_are_checked():
    (records, image), valid, labels = _data()
    with pytest.raises(ValueError, match="valid must be"):
        autotune("text", records, image, labels, False, None)
    with pytest.raises(ValueError, match="valid must be"):
        autotune("text", records, image, labels, False, ([], image[:0]))
    with pytest.raises(ValueError, match="max_trials"):
        autotune("text", records, image, labels, False, valid, max_trials=0)
    with pytest.raises(ValueError, match="not 'text'"):
        autotune("text", records, image, labels, False, valid, base=Recipe(model="pq"))
    with pytest.raises(ValueError, match="system must be one of"):
        autotune("lstm", records, image, labels, False, valid)


def test_an_auto_gate_is_recorded_as_the_modality_kept():
    result = _run("gated", max_trials=2)
    assert Recipe.default("gated").gate == "auto"
    assert all(trial.recipe.gate in ("text", "image") for trial in result.trials)
    assert result.recipe == result.trained.recipe
