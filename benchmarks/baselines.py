"""The plain baselines every mmfast model is compared with: the ``fasttext`` package on the text,
and scikit-learn's logistic regression on [L2-normalized image features ; TF-IDF of the text].

Both take ``mmfast.data.Record`` lists and return ``(scores, seconds)``: ``scores`` a float32
tensor [N_heldout, K] in the order of ``labels`` (higher = more likely), ``seconds`` the wall
time of training (tuning included). A helper module, not a benchmark: pytest collects only
``test_*`` and ``bench_*`` files.

    from baselines import fasttext_baseline, logistic_baseline
    scores, seconds = fasttext_baseline(train, heldout, data.labels, data.multilabel)
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import torch

from mmfast import metrics
from mmfast.data import Record
from mmfast.nn.fasttext import tokenize
from mmfast.systems.base import targets

FEATURES = ("image", "text")


def _split(num_items: int, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (fit, validation) split of ``range(num_items)``, ``fraction`` to validation."""
    order = np.random.default_rng(seed).permutation(num_items)
    num_validation = max(1, round(fraction * num_items))
    return np.sort(order[num_validation:]), np.sort(order[:num_validation])


# ----------------------------------------------------------------------------- fastText


def _fasttext_label(label: str) -> str:
    """A label as one fastText word."""
    return "__label__" + label.replace(" ", "_")


def _fasttext_text(record: Record) -> str:
    # The same lower-cased word tokens mmfast's models see; one line per record by construction.
    return " ".join(tokenize(record.text))


def _write_fasttext(records: Sequence[Record], multilabel: bool, path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            # fastText skips a line without a label; single-label training uses the first.
            labels = record.labels if multilabel else record.labels[:1]
            words = [_fasttext_label(label) for label in labels] + [_fasttext_text(record)]
            handle.write(" ".join(words) + "\n")


_TRAINING_ARGS = ("dim", "epoch", "lr", "wordNgrams", "minn", "maxn", "bucket", "minCount", "neg",
                  "ws", "lrUpdateRate", "t")

_REPORTED = ("loss", "dim", "epoch", "lr", "wordNgrams", "minn", "maxn", "bucket")

# Runs in a child process: see _autotune.
_AUTOTUNE_CHILD = """
import json, sys, time
import fasttext
fit_path, validation_path, out_path, model_path, duration, threads, seed, loss = sys.argv[1:]
start = time.perf_counter()
model = fasttext.train_supervised(
    fit_path, thread=int(threads), seed=int(seed), verbose=0,
    autotuneValidationFile=validation_path, autotuneDuration=int(duration),
    **({"loss": loss} if loss else {}))
seconds = time.perf_counter() - start
args = model.f.getArgs()
best = {name: getattr(args, name) for name in %r}
best["loss"] = args.loss.name
if model_path:
    model.save_model(model_path)
with open(out_path, "w") as handle:
    json.dump({"seconds": seconds, "args": best}, handle)
""" % (_TRAINING_ARGS,)


def _autotune_once(command: list[str], duration: int) -> tuple[int, str]:
    """Runs one autotune child; returns its exit status and its stderr."""
    grace = max(60, duration)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, stderr = process.communicate(timeout=duration + grace)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise RuntimeError(f"fasttext_baseline: autotune ({duration} s) still ran "
                               f"{duration + 2 * grace} s after it started; killed") from None
    return process.returncode, stderr.decode(errors="replace").replace("\r", "\n")


def _autotune(fit_path: str, validation_path: str, folder: str, duration: int, threads: int,
              seed: int, loss: str | None, keep_model: bool,
              attempts: int = 3) -> tuple[dict, float, int, str | None]:
    """fastText's autotune in a child process. Returns the best training arguments, the wall time
    of the search (autotune's final training on ``fit_path`` included, failed attempts too), the
    number of attempts, and the path of the model it saved when ``keep_model``.

    A child process because fastText's autotune can miss its own deadline and run forever: its
    ``startTimer`` starts the timer thread before setting ``continueTraining_``, and a timer
    thread that gets there first ends at once, leaving the trial loop nothing to stop it (seen
    here on a busy 2-core machine: group's 30 s autotune still running trials after 10 minutes,
    no timer thread left). When the child outlives ``duration`` by a grace period it gets SIGINT,
    which autotune's own handler turns into "stop searching, train the best arguments found";
    if that does not end it either, it is killed. The child's stdout and stderr (autotune's
    progress, printed whatever ``verbose`` says) are kept out of ours.

    Autotune's final training with the best arguments can diverge although the trial with the
    same arguments did not (Hogwild threads; seen on subgroup: "Encountered NaN." after the
    search): it then starts again with the next seed, up to ``attempts`` times.
    """
    out_path = os.path.join(folder, "autotune.json")
    model_path = os.path.join(folder, "autotune.bin") if keep_model else ""
    seconds = 0.0
    for attempt in range(attempts):
        command = [sys.executable, "-c", _AUTOTUNE_CHILD, fit_path, validation_path, out_path,
                   model_path, str(duration), str(threads), str(seed + attempt), loss or ""]
        start = time.perf_counter()
        status, stderr = _autotune_once(command, duration)
        if status == 0 and os.path.exists(out_path):
            with open(out_path) as handle:
                result = json.load(handle)
            return result["args"], seconds + result["seconds"], attempt + 1, model_path or None
        seconds += time.perf_counter() - start
        if "Encountered NaN" not in stderr:
            break
    raise RuntimeError(f"fasttext_baseline: autotune failed (exit {status}, attempt "
                       f"{attempt + 1} of {attempts}):\n{stderr[-2000:]}")


def fasttext_baseline(train: Sequence[Record], heldout: Sequence[Record], labels: Sequence[str],
                      multilabel: bool, *, dim: int = 100, epochs: int = 100, lr: float = 0.25,
                      ngrams: int = 2, threads: int = 2, autotune_seconds: int = 0,
                      refit: bool = True, seed: int = 0,
                      info: dict | None = None) -> tuple[torch.Tensor, float]:
    """``fasttext.train_supervised`` on the records' text (``mmfast.nn.fasttext.tokenize``'d:
    lower-cased word tokens, the tokens mmfast's own models see), softmax for single-label,
    one-vs-all (``loss="ova"``) for multi-label.

    Scores are fastText's probabilities from ``predict(texts, k=-1, threshold=-1)`` (softmax or
    per-label sigmoid) in the order of ``labels``; a label the model never saw in training scores
    0. Labels that differ only by spaces vs underscores would collide (fastText words hold no
    space): ValueError.

    Defaults: fastText's own supervised defaults (lr 0.1, epoch 5) underfit the demo's small
    sets (1,512 items of 2-3 words). Held-out figures on the demo tasks, mean (min-max) over
    seeds 0-4, 2 threads, dim 100, word bigrams; accuracy for group and subgroup, mAP for tags:

        lr 0.1   epoch 5     group 0.269 (0.191-0.344)  subgroup 0.131 (0.043-0.153)  tags 0.042
        lr 0.5   epoch 25    group 0.487 (0.406-0.573)  subgroup 0.296 (0.261-0.323)  tags 0.224
        lr 0.25  epoch 100   group 0.553 (0.503-0.591)  subgroup 0.353 (0.339-0.371)  tags 0.335

    An earlier sweep also tried lr 0.05-1.0 with epoch 25-200: lr 0.25 epoch 100 was best or
    within noise of the best on every task; lr 0.75 and 1.0 diverge ("Encountered NaN.") with
    the one-vs-all loss of tags.

    With ``autotune_seconds > 0``, fastText's own autotune picks the hyperparameters (``dim``,
    ``epochs``, ``lr``, ``ngrams`` are then ignored): it trains on 90% of ``train`` and scores on
    a seeded 10% (``autotuneValidationFile``, ``autotuneDuration``, its default f1 metric). With
    ``refit`` (the default) the best arguments are then trained once more on all of ``train``,
    as a user who holds out data only for tuning would; without it, autotune's own model (fit on
    the 90%) is kept. A refit that diverges ("Encountered NaN.") is tried with the next two
    seeds, then falls back to the 90% (``info["refit"]`` False). ``seconds`` counts the search
    (autotune's own final training on the 90% included) and the refit. Autotune runs in a child
    process, started again when its own final training diverges (see ``_autotune``;
    ``info["attempts"]``). Autotune's choice changes from run to run (its search is timed), and
    it maximizes f1 of the top label, not mAP.

    ``seed`` seeds fastText and the validation split; with ``threads > 1`` fastText's Hogwild
    updates make runs differ anyway, by several points on these small sets (above). A dict
    passed as ``info`` receives the hyperparameters of the model that made the scores.
    """
    import fasttext

    index = {}
    for position, label in enumerate(labels):
        word = _fasttext_label(label)
        if word in index:
            raise ValueError(f"fasttext_baseline: labels {labels[index[word]]!r} and {label!r} "
                             f"are the same fastText word {word!r}")
        index[word] = position
    loss = "ova" if multilabel else "softmax"
    with tempfile.TemporaryDirectory() as folder:
        train_path = os.path.join(folder, "train.txt")
        if autotune_seconds > 0:
            fit_rows, validation_rows = _split(len(train), seed)
            fit_path, validation_path = (os.path.join(folder, "fit.txt"),
                                         os.path.join(folder, "validation.txt"))
            _write_fasttext([train[i] for i in fit_rows], multilabel, fit_path)
            _write_fasttext([train[i] for i in validation_rows], multilabel, validation_path)
            _write_fasttext(train, multilabel, train_path)
            # The loss stays free for autotune to choose, except that multi-label needs ova.
            best, seconds, attempts, model_path = _autotune(
                fit_path, validation_path, folder, int(autotune_seconds), threads, seed,
                "ova" if multilabel else None, keep_model=not refit)
            if refit:
                start = time.perf_counter()
                model = None
                # Arguments at the edge of divergence can give "Encountered NaN." on one run
                # and not the next (Hogwild threads): two more seeds, then autotune's own
                # training set, on which these arguments did converge once.
                for attempt_seed, path in ((seed, train_path), (seed + 1, train_path),
                                           (seed + 2, train_path), (seed, fit_path)):
                    try:
                        model = fasttext.train_supervised(path, thread=threads,
                                                          seed=attempt_seed, verbose=0, **best)
                        break
                    except RuntimeError as error:
                        if info is not None:
                            info.setdefault("refit_errors", []).append(str(error))
                if model is None:
                    raise RuntimeError(f"fasttext_baseline: autotune's choice {best} diverges "
                                       f"on every try")
                refit = path == train_path
                seconds += time.perf_counter() - start
            else:
                model = fasttext.load_model(model_path)
            if info is not None:
                # From the child: a saved model does not keep its learning rate.
                info.update(refit=refit, attempts=attempts,
                            **{name: best[name] for name in _REPORTED})
        else:
            _write_fasttext(train, multilabel, train_path)
            start = time.perf_counter()
            model = fasttext.train_supervised(train_path, loss=loss, dim=dim, epoch=epochs, lr=lr,
                                              wordNgrams=ngrams, thread=threads, seed=seed,
                                              verbose=0)
            seconds = time.perf_counter() - start
            if info is not None:
                info.update(loss=loss, dim=dim, epoch=epochs, lr=lr, wordNgrams=ngrams)
    predicted_labels, probabilities = model.predict([_fasttext_text(r) for r in heldout],
                                                    k=-1, threshold=-1)
    scores = torch.zeros(len(heldout), len(labels))  # [N, K]
    for row, (words, values) in enumerate(zip(predicted_labels, probabilities)):
        for word, value in zip(words, values):
            if word in index:
                scores[row, index[word]] = float(value)
    return scores, seconds


# ----------------------------------------------------------------------------- logistic regression


def _logistic_features(records, image, features, vectorizer, fit: bool):
    from scipy import sparse
    from sklearn.preprocessing import normalize

    blocks = []
    if "image" in features:
        blocks.append(sparse.csr_matrix(normalize(np.asarray(image, np.float64))))
    if "text" in features:
        texts = [record.text for record in records]
        blocks.append(vectorizer.fit_transform(texts) if fit else vectorizer.transform(texts))
    return sparse.hstack(blocks, format="csr")


def _fit_logistic(records, image, features, multilabel, classes, C, seed, max_iter):
    """Fits the TF-IDF vocabulary and a classifier; returns a function of (records, image) ->
    [N, len(classes)] float64 scores (log-probabilities, or one-vs-rest logits)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    vectorizer = (TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
                  if "text" in features else None)
    x = _logistic_features(records, image, features, vectorizer, fit=True)
    classifier = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    if multilabel:
        column = {label: i for i, label in enumerate(classes)}
        y = np.zeros((len(records), len(classes)), np.int64)
        for row, record in enumerate(records):
            y[row, [column[label] for label in record.labels if label in column]] = 1
        classifier = OneVsRestClassifier(classifier).fit(x, y)
    else:
        classifier.fit(x, [record.labels[0] for record in records])
        assert list(classifier.classes_) == list(classes)  # both sorted by code point

    def score(records, image) -> np.ndarray:
        x = _logistic_features(records, image, features, vectorizer, fit=False)
        if multilabel:
            return classifier.decision_function(x)
        # Log-probabilities rank items within a class as the probabilities do, without ties
        # from underflow; classifier.classes_ is sorted, classes is too.
        return classifier.predict_log_proba(x)

    return score


def _scores_in_order(values: np.ndarray, classes: Sequence[str], labels: Sequence[str],
                     rows: int) -> torch.Tensor:
    scores = torch.full((rows, len(labels)), -torch.inf)  # [N, K]
    index = {label: i for i, label in enumerate(labels)}
    columns = [index[label] for label in classes]
    scores[:, columns] = torch.from_numpy(np.asarray(values, np.float32).reshape(rows, -1))
    return scores


def _present_classes(records, multilabel) -> list[str]:
    if multilabel:
        counts: dict[str, int] = {}
        for record in records:
            for label in set(record.labels):
                counts[label] = counts.get(label, 0) + 1
        # A class needs positives and negatives to be fitted.
        return sorted(label for label, count in counts.items() if 0 < count < len(records))
    return sorted({record.labels[0] for record in records})


def _validation_score(scores: torch.Tensor, records, labels, multilabel) -> float:
    """Accuracy (single-label) or mean average precision (multi-label) of ``scores``."""
    if multilabel:
        truth = targets(records, labels, multilabel)
        return metrics.average_precision(scores, truth) if truth.any() else 0.0
    predicted = scores.argmax(1).tolist()
    return float(np.mean([labels[p] == record.labels[0] for p, record in zip(predicted, records)]))


def logistic_baseline(train: Sequence[Record], train_image: np.ndarray,
                      heldout: Sequence[Record], heldout_image: np.ndarray,
                      labels: Sequence[str], multilabel: bool, *,
                      features: Sequence[str] = FEATURES,
                      grid: Sequence[float] = (1.0, 10.0, 100.0), max_iter: int = 1000,
                      threads: int = 1, seed: int = 0,
                      info: dict | None = None) -> tuple[torch.Tensor, float]:
    """scikit-learn ``LogisticRegression`` (L2, lbfgs) on ``[L2-normalized image features ;
    TF-IDF of the text]`` (``TfidfVectorizer``, word unigrams and bigrams, sublinear tf, its rows
    L2-normalized too), or on one of them with ``features=("image",)`` / ``("text",)``.

    Single-label: one multinomial model, scores its log-probabilities. Multi-label: one binary
    model per label (``OneVsRestClassifier``), scores their logits. ``C`` is the value of
    ``grid`` with the best accuracy (single-label) or mean average precision (multi-label) on a
    seeded 10% of ``train`` after fitting on the other 90% (ties to the first), then the model is
    refit on all of ``train``; ``seconds`` counts the search and the refit.

    BLAS and OpenMP run on ``threads`` threads (``threadpoolctl``). The default is 1: on a busy
    2-core machine, 2 threads made the same fits 1.1x to 18x slower (group image-only 50 s
    against 2.7 s, tags [image;text] 59 s against 14 s, subgroup [image;text] 62 s against
    54 s), and the sparse products of the solver are single-threaded anyway.

    A class that cannot be fitted (absent from ``train``, or for multi-label on every item)
    scores -inf. A dict passed as ``info`` receives the chosen ``C`` and the validation figure
    of each grid value.
    """
    features = tuple(features)
    if not features or any(feature not in FEATURES for feature in features):
        raise ValueError(f"logistic_baseline: features must be a non-empty subset of {FEATURES}, "
                         f"got {features}")
    from threadpoolctl import threadpool_limits

    train_image = np.asarray(train_image)
    if not multilabel:  # an item without a known label has nothing to teach a softmax
        known = set(labels)
        kept = [i for i, record in enumerate(train) if record.labels and record.labels[0] in known]
        train, train_image = [train[i] for i in kept], train_image[kept]

    def fit(rows, C):
        records = [train[i] for i in rows]
        classes = [c for c in _present_classes(records, multilabel) if c in set(labels)]
        return classes, _fit_logistic(records, train_image[rows], features, multilabel, classes,
                                      C, seed, max_iter)

    with threadpool_limits(limits=threads):
        start = time.perf_counter()
        best_C = grid[0]
        if len(grid) > 1:
            fit_rows, validation_rows = _split(len(train), seed)
            validation_records = [train[i] for i in validation_rows]
            best, validations = -np.inf, {}
            for C in grid:
                classes, score = fit(fit_rows, C)
                values = score(validation_records, train_image[validation_rows])
                validations[C] = _validation_score(
                    _scores_in_order(values, classes, labels, len(validation_records)),
                    validation_records, labels, multilabel)
                if validations[C] > best:
                    best, best_C = validations[C], C
            if info is not None:
                info["validation"] = validations
        classes, score = fit(np.arange(len(train)), best_C)
        seconds = time.perf_counter() - start
        values = score(heldout, heldout_image)
    if info is not None:
        info["C"] = best_C
    scores = _scores_in_order(values, classes, labels, len(heldout))
    return scores, seconds
