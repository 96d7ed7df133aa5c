"""fastText's ``-autotune-validation`` for every system: a seeded search of the recipe's
hyperparameters, each trial the system's ``fit`` scored on a validation set.

The strategy follows fastText's ``autotune.cc``: the first trial is the base recipe; then each
trial takes a recipe either sampled from the whole search space (the first fifth of the budget)
or perturbed from the best recipe so far, every field moved by a random factor (log scale)
whose spread shrinks as the budget is used up (fastText's schedule: full spread until a
quarter of the budget, down to the final spread at three quarters).
"""

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from tqdm import tqdm

from mmfast import systems
from mmfast.data import Record
from mmfast.defaults import ANANETS, GATED_MODELS, GATES, MODELS
from mmfast.systems.base import Fitted
from mmfast.train.fasttext import SCORE_NAMES

# Trained by mmfast.ops.fasttext_sgd_ (per-example SGD) on the fused backend: larger rates.
FUSED_MODELS = ("text", "pq", "rspq")
TEXT_MODELS = tuple(model for model in MODELS if model != "continuous")
RANDOM_FRACTION = 0.2  # the share of the budget whose trials sample the whole space
# Spread of a perturbation at the start and at the end of the budget, in log2 units for
# ranges (1.0: the value halved or doubled at one standard deviation) and in positions for
# choices.
RANGE_SIGMA = (1.5, 0.5)
CHOICE_SIGMA = (1.0, 0.4)


@dataclass(frozen=True)
class LogRange:
    """A positive number drawn log-uniformly from [low, high]; rounded when ``integer``."""

    low: float
    high: float
    integer: bool = False

    def sample(self, rng: random.Random):
        return self._cast(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def perturb(self, value, rng: random.Random, spread: float):
        return self._cast(value * 2.0 ** rng.gauss(0.0, spread * RANGE_SIGMA[0]
                                                   + (1 - spread) * RANGE_SIGMA[1]))

    def _cast(self, value):
        value = min(max(value, self.low), self.high)
        return int(round(value)) if self.integer else value


@dataclass(frozen=True)
class Choice:
    """One of ``values``, in order: a perturbation moves a random number of places."""

    values: tuple

    def sample(self, rng: random.Random):
        return rng.choice(self.values)

    def perturb(self, value, rng: random.Random, spread: float):
        step = rng.gauss(0.0, spread * CHOICE_SIGMA[0] + (1 - spread) * CHOICE_SIGMA[1])
        index = min(max(self._index(value) + int(round(step)), 0), len(self.values) - 1)
        return self.values[index]

    def _index(self, value) -> int:
        if value in self.values:
            return self.values.index(value)
        positive = [i for i, v in enumerate(self.values)
                    if isinstance(v, (int, float)) and v > 0]
        if isinstance(value, (int, float)) and value > 0 and positive:  # a base value off the grid
            return min(positive, key=lambda i: abs(math.log(self.values[i] / value)))
        return 0


def search_space(model: str, image_dim: int, items: int, multilabel: bool = False) -> dict:
    """The recipe fields the system ``model`` reads and their ranges, for ``items`` training
    items with ``image_dim``-dimensional image features (PQ subvectors must divide it, and
    k-means needs at least as many items as centroids)."""
    systems.get(model)  # a ValueError naming the systems
    if model not in MODELS:
        return _dense_space(model)
    if model == "mlp":  # AdamW steps
        lr = LogRange(3e-4, 1e-2)
    elif model == "bilinear":
        # the product of two learned vectors and their offsets: diverged above 0.3 on the emoji
        lr = LogRange(0.02, 1.0)
    elif model not in FUSED_MODELS:
        # minibatch steps on centered image vectors: the emoji and icon tasks trained best at
        # lr 3-5 (max, single-label, at 8) and the multi-label tags collapsed at 10
        lr = LogRange(0.05, 8.0)
    elif multilabel:
        # A per-example one-vs-all step sums K labels' gradients: on the demo's 113 tags every
        # run above lr 0.6 diverged to NaN, so the range stops lower than softmax's.
        lr = LogRange(0.05, 1.0)
    else:
        lr = LogRange(0.05, 5.0)
    space = {
        "lr": lr,
        "epochs": LogRange(5, 100, integer=True),
        "dim": Choice((256, 512, 1024, 2048) if model == "mlp" else (10, 20, 50, 100, 200)),
    }
    if model == "mlp":
        space["dropout"] = Choice((0.0, 0.2, 0.5))
    if model in TEXT_MODELS:
        space["ngrams"] = Choice((1, 2, 3))
        # the mlp's table is buckets x hidden (up to 2048) under Adam: 2M buckets would be 48 GB
        space["buckets"] = Choice((10_000, 50_000, 100_000) if model == "mlp" else
                                  (10_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
                                   2_000_000))
    if model in GATED_MODELS:
        space["gate"] = Choice(GATES)
    if model == "bilinear":  # its text table's rate (Adwaita icons: 0.690 at 1x, 0.868 at 5x,
        # 0.832 at 15x; the oxygen icons best at 1x)
        space["text_lr_scale"] = Choice((1.0, 2.0, 5.0, 10.0))
    if model in ("pq", "rspq"):
        # RSPQ's repeated tokens trained best at alpha 2-4 on the emoji, PQ's at 1
        space["alpha"] = LogRange(0.01, 4.0 if model == "rspq" else 2.0)
        space["subvectors"] = Choice(tuple(s for s in (2, 4, 8, 16, 32, 64) if image_dim % s == 0)
                                     or (1,))
        space["centroids"] = Choice(tuple(c for c in (16, 32, 64, 128, 256) if c <= items)
                                    or (max(2, min(items, 16)),))
    if model == "rspq":
        space["repetitions"] = Choice((1, 2, 4, 8))
    if model not in FUSED_MODELS:
        space["batch_size"] = Choice((8, 16, 32, 64))
        # the dense parameters' L2 penalty: emoji group additive 0.761 -> 0.782 held-out at
        # 1e-3, but tags mAP 0.515 -> 0.479, so it is searched, not a default
        # (AdamW's decoupled decay, the mlp's, works at larger values: its default is 0.01)
        space["weight_decay"] = Choice((0.0, 1e-3, 1e-2, 3e-2, 0.1) if model == "mlp" else
                                       (0.0, 1e-4, 3e-4, 1e-3, 3e-3))
    return space


def _dense_space(model: str) -> dict:
    """The search space of the systems that read one vector per modality (cacnet, the
    autoencoders) and of AnANet."""
    epochs = LogRange(5, 100, integer=True)
    if model in ANANETS:  # Adam steps, the paper's 1e-3 in the middle
        return {"lr": LogRange(3e-4, 3e-3), "epochs": LogRange(5, 40, integer=True),
                "dim": Choice((64, 128, 256)), "text_dim": Choice((25, 50, 100)),
                "num_words": Choice((4, 8, 16))}
    text = {"text_features": Choice(("hashed", "word2vec")), "text_dim": Choice((20, 50, 100,
                                                                                 300)),
            "image_dim": Choice((50, 100, 200, 300))}
    if model == "cacnet":  # per-label SGD steps (times the label count)
        return {"lr": LogRange(0.005, 0.3), "epochs": epochs,
                "dim": Choice((200, 600, 1000, 2000)), **text}
    space = {"lr": LogRange(1e-4, 1e-2), "epochs": epochs, **text}
    if model in ("joint_ae", "crossmodal_ae_ii"):  # the ones that weigh the text term
        space["mu"] = LogRange(1.0, 30.0)
    return space


@dataclass
class Trial:
    """One recipe tried: its best validation score (-inf when ``fit`` refused the recipe, with
    the reason in ``error``), the epoch that scored it, and the trial's wall-clock seconds."""

    recipe: object
    score: float
    best_epoch: int
    seconds: float
    error: str | None = None


@dataclass
class AutotuneResult:
    """The best trial's model (its recipe's planned ``epochs``, the weights of its best epoch),
    its recipe and validation score, every trial in order, and the score's name."""

    trained: Fitted
    recipe: object
    score: float
    trials: list[Trial]
    metric: str


def autotune(model: str, records: Sequence[Record], image: np.ndarray | None,
             labels: Sequence[str], multilabel: bool,
             valid: tuple[Sequence[Record], np.ndarray | None], *, duration: float = 60.0,
             seed: int = 0, max_trials: int | None = None, base=None,
             progress: bool = False, device=None) -> AutotuneResult:
    """Search the recipe of the system ``model`` for the best score on ``valid`` = (records,
    image features) (accuracy, or mAP when ``multilabel``), as fastText's
    ``-autotune-validation`` does.

    Trial 0 trains ``base`` (default: the system's default recipe for the task); each later trial
    samples the fields ``model`` uses (``search_space``) or perturbs the best recipe so far, the
    other fields and ``seed`` staying the base's, so trials differ in hyperparameters alone. Every
    trial keeps the weights of its best validation epoch; the result is the best trial's
    model as trained (the first of equal scores), with no retraining: its recipe keeps the
    planned ``epochs``, as the learning rate decayed over those, and the epoch that scored is
    in ``trained.stats["best_epoch"]``. Only that model is kept, so memory stays that of two
    trials. A trial that raises ``ValueError`` (more centroids than items; a multi-label run
    diverged at a high ``lr``, whose NaN scores the mAP refuses) is recorded with score -inf
    and skipped; if all fail, the last error is raised.

    Trials start while the time spent plus the mean trial time fits in ``duration`` seconds
    (at least one always runs) and, with ``max_trials``, until that many have run. With
    ``max_trials`` the schedule follows the trial count, so one ``seed`` gives exactly the
    same recipes and scores each run, as long as ``duration`` does not stop it first and the
    fused path trains on one thread (epochs shorter than ``HOGWILD_MIN_EXAMPLES``, or under
    ``torch.use_deterministic_algorithms(True)``: Hogwild threads race, as fastText's do). With
    ``duration`` alone it follows the clock, and how many trials run (hence the result) depends
    on the machine's speed. Every trial trains on ``device`` (``System.fit``'s).
    """
    if valid is None or len(valid[0]) == 0:
        raise ValueError("autotune: valid must be (records, image features) with at least "
                         "one record; split them off the training set")
    if not duration > 0:
        raise ValueError(f"autotune: duration must be > 0 seconds, got {duration}")
    if max_trials is not None and max_trials < 1:
        raise ValueError(f"autotune: max_trials must be >= 1 or None, got {max_trials}")
    system = systems.get(model)
    base = base or system.default_recipe(multilabel, len(labels))
    if base.model != model:
        raise ValueError(f"autotune: base recipe is for {base.model!r}, not {model!r}")
    space = search_space(model, 0 if image is None else image.shape[1], len(records),
                         multilabel)
    metric = SCORE_NAMES["ova" if multilabel else "softmax"]
    rng = random.Random(seed)
    trials: list[Trial] = []
    tried: set[tuple] = set()
    best: tuple[Trial, Fitted] | None = None
    error: ValueError | None = None
    start = time.perf_counter()
    with tqdm(total=max_trials or duration, desc=f"autotune {model}",
              unit="trial" if max_trials else "s", disable=not progress, leave=False) as bar:
        while True:
            elapsed = time.perf_counter() - start
            if trials and (
                    (max_trials is not None and len(trials) >= max_trials)
                    or elapsed + elapsed / len(trials) > duration):
                break
            used = len(trials) / max_trials if max_trials else elapsed / duration
            recipe = (base if not trials else
                      _next_recipe(base, best and best[0].recipe, space, rng, used, tried))
            tried.add(_key(recipe))
            trial_start = time.perf_counter()
            try:
                trained = system.fit(recipe, (records, image), labels, multilabel, valid,
                                     device=device)
            except ValueError as failure:
                error = failure
                trials.append(Trial(recipe, -math.inf, 0, time.perf_counter() - trial_start,
                                    str(failure)))
            else:
                # the recipe as trained: a gate or text_lr_scale "auto" resolved to the value
                # kept, a probe penalty to the one chosen
                trial = Trial(trained.recipe, trained.stats["valid_score"],
                              trained.stats["best_epoch"], time.perf_counter() - trial_start)
                trials.append(trial)
                if best is None or trial.score > best[0].score:
                    best = trial, trained
                del trained  # a worse trial's model goes now, not at the next assignment
            if max_trials:
                bar.update()
            else:
                bar.update(min(time.perf_counter() - start, duration) - bar.n)
            bar.set_postfix(best=f"{best[0].score:.4g}" if best else "-", trials=len(trials))
    if best is None:
        raise ValueError(f"autotune: all {len(trials)} trial(s) failed; last: {error}") \
            from error
    trial, trained = best
    trained.stats["autotune"] = {
        "trials": len(trials), "failed": sum(t.error is not None for t in trials),
        "best_trial": trials.index(trial), "best_score": trial.score, "metric": metric,
        "seconds": time.perf_counter() - start, "seed": seed, "recipe": asdict(trial.recipe),
    }
    return AutotuneResult(trained, trial.recipe, trial.score, trials, metric)


def _next_recipe(base, best, space: dict, rng: random.Random, used: float, tried: set,
                 attempts: int = 10):
    """A sampled recipe early in the budget or before any trial succeeded, else a
    perturbation of ``best`` with the spread of ``used`` (the budget's share spent); redrawn
    up to ``attempts`` times while it repeats a recipe already tried."""
    # fastText's schedule: full spread until a quarter of the budget, final from three quarters
    spread = 1.0 - min(max((used - 0.25) / 0.5, 0.0), 1.0)
    for _ in range(attempts):
        if best is None or used < RANDOM_FRACTION:
            fields = {name: kind.sample(rng) for name, kind in space.items()}
        else:
            fields = {name: kind.perturb(getattr(best, name), rng, spread)
                      for name, kind in space.items()}
        recipe = replace(base, **fields)
        if _key(recipe) not in tried:
            break
    return recipe


def _key(recipe) -> tuple:
    return tuple(sorted(asdict(recipe).items()))
