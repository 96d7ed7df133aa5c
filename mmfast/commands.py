"""The paper-003 commands of ``mmfast``: demo, features, train, classify, eval."""

import csv
import json
import time
from dataclasses import asdict, fields
from itertools import islice
from pathlib import Path

import torch
from tqdm import tqdm

from mmfast import metrics
from mmfast._io import atomic_path, locked, stale_temporaries
from mmfast.data import FeatureStore, Manifest, emoji_dataset, read_manifest, split_records
from mmfast.features import BadImageError, ImageFeatureExtractor
from mmfast.features.image import PACKAGED
from mmfast.report import format_report, plot_report, write_confusion_csv
from mmfast.train.autotune import autotune
from mmfast.train.fasttext import OPTIMIZERS, predict
from mmfast.train.kiela import (DEMO_IMAGE_SIZE, MODELS, PAPER_MODELS, RECIPE_GATES, Recipe,
                                Trained, demo_image_store, fit, image_store, store_features)

def run_demo(args) -> int:
    torch.manual_seed(0)
    data = emoji_dataset(args.task)
    train_records = read_manifest(data.train)[: args.limit]
    heldout = read_manifest(data.heldout)[: args.limit and max(args.limit // 4, 1)]
    names = {"all": MODELS, "paper": PAPER_MODELS}.get(args.models, tuple(args.models.split(",")))
    print(f"mmfast demo: paper 003 (Kiela et al.) on {len(train_records)} + {len(heldout)} "
          f"held-out emoji (Twemoji images + names), task {data.task!r} "
          f"({len(data.labels)} {'tags' if data.multilabel else 'classes'}), "
          f"{torch.get_num_threads()} threads")
    start = time.perf_counter()
    store = demo_image_store(train_records + heldout)
    print(f"image features: EfficientNet-Lite0 (ImageNet), {DEMO_IMAGE_SIZE}px, pooled 1280-d, "
          f"store {store.directory} ({time.perf_counter() - start:.1f} s)")
    # as `mmfast train` does by default: a seeded 10% of the training split validates
    fit_records, valid_records = split_records(train_records, 0.1, seed=0)
    valid = (valid_records, store_features(store, valid_records))
    fit_image, heldout_image = store_features(store, fit_records), store_features(store, heldout)
    columns = ("P@1", "mAP") if data.multilabel else ("accuracy", "f1_macro")
    print(f"{'model':<15}" + "".join(f"{c:>9}" for c in columns) + f"{'valid':>7} {'epoch':>5} "
          f"{'train s':>8} {'train items/s':>14} {'classify items/s':>17}")
    for name in names:
        recipe = Recipe.default(name, data.multilabel,
                                **({"epochs": args.epochs} if args.epochs else {}))
        trained = fit(recipe, fit_records, fit_image, data.labels, data.multilabel, valid=valid)
        examples = trained.examples(heldout, heldout_image)
        begin = time.perf_counter()
        logits = predict(trained.model, examples)
        rate = len(heldout) / (time.perf_counter() - begin)
        report = metrics.classification_report(logits, examples.targets, data.multilabel)
        stats = trained.stats
        print(f"{name:<15}" + "".join(f"{report[c]:>9.3f}" for c in columns)
              + f"{stats['valid_score']:>7.3f} {stats['best_epoch']:>5} {stats['seconds']:>8.2f} "
              f"{stats['items_per_s']:>14,.0f} {rate:>17,.0f}")
    print(f"total {time.perf_counter() - start:.1f} s; valid: the kept epoch's "
          f"{trained.stats['metric']} on {len(valid_records)} training items "
          "held out to validate; train items/s counts items x epochs; classify excludes feature "
          "extraction")
    return 0


def _extractor(args) -> ImageFeatureExtractor:
    weights = PACKAGED if args.weights == PACKAGED else (None if args.weights == "none"
                                                           else args.weights)
    return ImageFeatureExtractor(args.backbone, weights, args.image_size, args.batch_size)


_NAMED_SKIPS = 10  # skipped images listed by manifest line


def _features(args) -> int:
    manifests = [Manifest(path, skip_bad=args.skip_bad) for path in args.manifest]
    where, records = {}, []
    for manifest in manifests:
        for line, record in manifest.numbered():
            where.setdefault(record.id, line)
            records.append(record)
    start, skipped = time.perf_counter(), []
    try:
        store = image_store(records, args.store, _extractor(args), progress=not args.quiet,
                            skip_bad=args.skip_bad, skipped=skipped)
    except BadImageError as error:
        raise ValueError(f"{where[error.record_id]}: {error} (--skip-bad passes over such "
                         "records)") from None
    bad_records = sum(manifest.skipped for manifest in manifests)
    print(f"{len(store)} items in {store.directory} ({time.perf_counter() - start:.1f} s)"
          + (f", {bad_records} bad records and {len(skipped)} unreadable images skipped"
             if args.skip_bad else ""))
    for record in skipped[:_NAMED_SKIPS]:
        print(f"  skipped {where[record.id]}: image {record.image}")
    if len(skipped) > _NAMED_SKIPS:
        print(f"  ... and {len(skipped) - _NAMED_SKIPS} more")
    return 0



def _validation_split(args, records: list) -> tuple[list, list]:
    """``(train, valid)``: ``--valid``'s records, or a seeded ``--valid-fraction`` of the
    training manifest (none when 0)."""
    if args.valid:
        return records, read_manifest(args.valid)
    if args.valid_fraction == 0:
        return records, []
    train, valid = split_records(records, args.valid_fraction, seed=args.seed or 0)
    if not train or not valid:
        raise ValueError(f"--valid-fraction {args.valid_fraction} of {len(records)} items leaves "
                         f"{len(train)} to train and {len(valid)} to validate: pass --valid or "
                         "--valid-fraction 0")
    return train, valid


def _train(args) -> int:
    records = read_manifest(args.train)
    if not records:
        raise ValueError(f"--train {args.train}: expected training items, got an empty manifest")
    store = FeatureStore(args.store)
    multilabel = args.multilabel or any(len(r.labels) > 1 for r in records)
    labels = sorted({label for record in records for label in record.labels})
    with locked(args.out, "another mmfast train"):
        return _train_locked(args, records, store, multilabel, labels)


def _train_locked(args, records, store, multilabel, labels) -> int:
    train_records, valid_records = _validation_split(args, records)
    valid = (valid_records, store_features(store, valid_records)) if valid_records else None
    overrides = {f.name: getattr(args, f.name) for f in fields(Recipe)
                 if f.name != "model" and getattr(args, f.name, None) is not None}
    recipe = Recipe.default(args.model, multilabel, **overrides)
    train_image = store_features(store, train_records)
    if args.autotune:
        if valid is None:
            raise ValueError("--autotune needs a validation split: pass --valid or a "
                             "--valid-fraction above 0")
        result = autotune(args.model, train_records, train_image, labels, multilabel, valid,
                          duration=args.autotune_duration, seed=recipe.seed, base=recipe,
                          progress=not args.quiet)
        trained = result.trained
        print(f"autotune: {len(result.trials)} trials in {args.autotune_duration:g} s, best "
              f"valid {result.metric} {result.score:.4f}; recipe "
              f"{json.dumps(asdict(result.recipe))}")
    else:
        trained = fit(recipe, train_records, train_image, labels, multilabel,
                      progress=not args.quiet, valid=valid)
    if valid is not None:
        trained.stats["valid_items"] = len(valid_records)
    trained.save(args.out, extractor=store.meta.get("extractor"))
    stats = trained.stats
    print(f"trained {args.model} on {len(train_records)} items in {stats['seconds']:.2f} s "
          f"({stats['items_per_s']:,.0f} items/s); checkpoint {args.out}")
    last = stats["history"][-1]
    if valid is not None:
        best = stats["history"][stats["best_epoch"] - 1]
        print(f"kept epoch {stats['best_epoch']} of {len(stats['history'])}: valid "
              f"{stats['metric']} {stats['valid_score']:.4f} on {len(valid_records)} items, "
              f"train {best['train_' + stats['metric']]:.4f}")
    else:
        print(f"no validation split: kept the last epoch, train {stats['metric']} "
              f"{last['train_' + stats['metric']]:.4f}")
    return 0


def _batches(manifest: Manifest, size: int):
    """Lists of at most ``size`` ``(where, record)`` pairs."""
    numbered = manifest.numbered()
    while batch := list(islice(numbered, size)):
        yield batch


def _image_source(args, config: dict):
    """A function of ``(where, record)`` pairs -> ``(image features, records, unreadable)``:
    features from --store, or extracted now as at training; with --skip-bad, records whose image
    cannot be read are left out (and counted), else the first is an error naming its line."""
    if args.store:
        store = FeatureStore(args.store)
        return lambda numbered: (store_features(store, [r for _, r in numbered]),
                                 [r for _, r in numbered], 0)
    recipe = config.get("extractor")
    if recipe is None:
        raise ValueError(f"{args.command}: the checkpoint records no image extractor: pass "
                         "--store")
    extractor = ImageFeatureExtractor(recipe["backbone"], image_size=recipe["image_size"])
    skip_bad = getattr(args, "skip_bad", False)

    def extract(numbered):
        try:
            features, bad = extractor.extract([r.image for _, r in numbered], False, skip_bad)
        except BadImageError as error:
            raise ValueError(f"{numbered[error.index][0]}: {error}"
                             + (" (--skip-bad passes over such records)"
                                if hasattr(args, "skip_bad") else "")) from None
        unreadable = set(bad)
        return features, [r for i, (_, r) in enumerate(numbered) if i not in unreadable], len(bad)
    return extract


def _thresholds(args, labels) -> torch.Tensor | None:
    if args.thresholds:
        table = json.loads(Path(args.thresholds).read_text())
        unknown = set(table) - set(labels)
        if unknown:
            raise ValueError(f"--thresholds {args.thresholds}: labels {sorted(unknown)} are not "
                             "in the checkpoint")
        return torch.tensor([float(table.get(label, args.threshold or 0.5)) for label in labels])
    if args.threshold is not None:
        return torch.full((len(labels),), float(args.threshold))
    return None


def _resumable(output: Path, as_csv: bool) -> tuple[list[str], list[str]]:
    """The complete rows (lines, with their ids) that a killed ``classify`` left in its
    unfinished output, the newest when there are several; none when there is none."""
    stale = stale_temporaries(output)
    if not stale:
        return [], []
    text = stale[0].read_text(encoding="utf-8", errors="surrogateescape")
    lines = text[:text.rfind("\n") + 1].splitlines(keepends=True)  # a cut last line is dropped
    if as_csv:
        lines = lines[1:]  # the header is written again
        ids = [row[0] for row in csv.reader(lines)]
    else:
        ids = [json.loads(line)["id"] for line in lines]
    return lines, ids


def _classify(args) -> int:
    trained, config = Trained.load(args.checkpoint)
    images = _image_source(args, config)
    thresholds = _thresholds(args, trained.labels)
    k = min(args.top_k, len(trained.labels))
    manifest = Manifest(args.input, skip_bad=args.skip_bad)
    output = Path(args.output)
    as_csv = output.suffix.lower() == ".csv"
    done_lines, done_ids = _resumable(output, as_csv) if args.resume else ([], [])
    resume_left = set(done_ids)
    count, unreadable, start = len(done_lines), 0, time.perf_counter()
    with atomic_path(output) as temporary, open(temporary, "w", newline="",
                                                encoding="utf-8") as out, \
            tqdm(desc="classify", unit="item", disable=args.quiet, leave=False) as bar:
        writer = csv.writer(out) if as_csv else None
        if writer:
            writer.writerow(["id", "labels", "scores"])
        out.writelines(done_lines)
        for numbered in _batches(manifest, args.batch_size):
            if resume_left:  # items the interrupted run wrote: their rows are copied above
                todo = [pair for pair in numbered if pair[1].id not in resume_left]
                resume_left.difference_update(record.id for _, record in numbered)
                bar.update(len(numbered) - len(todo))
                numbered = todo
                if not numbered:
                    continue
            features, batch, bad = images(numbered)
            unreadable += bad
            bar.update(bad)
            if not batch:
                continue
            examples = trained.examples(batch, features, with_targets=False)
            scores = trained.probabilities(examples)
            for record, row in zip(batch, scores):
                if thresholds is not None:
                    chosen = torch.nonzero(row >= thresholds).flatten()
                    chosen = chosen[row[chosen].argsort(descending=True)]
                else:
                    chosen = row.topk(k).indices
                labels = [trained.labels[i] for i in chosen.tolist()]
                values = [round(float(row[i]), 6) for i in chosen.tolist()]
                if writer:
                    writer.writerow([record.id, "|".join(labels),
                                     "|".join(f"{v:g}" for v in values)])
                else:
                    out.write(json.dumps({"id": record.id, "labels": labels, "scores": values},
                                         ensure_ascii=False) + "\n")
            count += len(batch)
            bar.update(len(batch))
            out.flush()  # what a killed run leaves for --resume ends at a batch
        if resume_left:
            raise ValueError(f"--resume: the interrupted output of {output} holds "
                             f"{len(resume_left)} ids that are not in --input {args.input}, "
                             f"e.g. {next(iter(resume_left))!r}: it is not this input's")
    seconds = time.perf_counter() - start
    skipped = (f", {manifest.skipped} bad records and {unreadable} unreadable images skipped"
               if args.skip_bad else "")
    resumed = f", {len(done_lines)} of them resumed from an interrupted run" if args.resume else ""
    rate = (count - len(done_lines)) / max(seconds, 1e-9)
    print(f"classified {count} items in {seconds:.2f} s ({rate:,.0f} items/s) -> "
          f"{output}{resumed}{skipped}")
    return 0


def _eval(args) -> int:
    trained, config = Trained.load(args.checkpoint)
    numbered = list(Manifest(args.input).numbered())
    if not numbered:
        raise ValueError(f"--input {args.input}: expected items to evaluate, got none")
    images = _image_source(args, config)
    features, records, _ = images(numbered)
    examples = trained.examples(records, features)
    logits = predict(trained.model, examples)
    report = metrics.classification_report(logits, examples.targets, trained.multilabel)
    if args.confusion and trained.multilabel:
        raise ValueError("--confusion: a confusion matrix needs a single-label model, got "
                         "a multi-label one (see --per-class)")
    if args.plot:  # first: it refuses a path whose format it cannot write before writing
        plot_report(args.plot, report, trained.labels)
    if args.confusion:
        known = examples.targets != metrics.UNKNOWN_TARGET
        write_confusion_csv(args.confusion, metrics.confusion_matrix(
            logits.argmax(1)[known], examples.targets[known], len(trained.labels)),
            trained.labels)
    if args.json:
        if not args.per_class:
            report.pop("per_class")
        print(json.dumps(report))
    else:
        print(format_report(report, trained.labels, per_class=args.per_class))
    return 0


def _recipe_defaults(field: str) -> str:
    """``field``'s default in every model's recipe, e.g. "50 for text, pq; 100 for max", then
    where multi-label tasks differ, e.g. "; multi-label: 0.4 for text"."""
    def listing(multilabel: bool, only: set | None = None) -> str:
        models_of: dict = {}
        for model in MODELS:
            value = getattr(Recipe.default(model, multilabel), field)
            if only is None or model in only:
                models_of.setdefault(value, []).append(model)
        if len(models_of) == 1 and only is None:
            return str(next(iter(models_of)))
        return "; ".join(f"{value} for {', '.join(models)}"
                         for value, models in models_of.items())

    differs = {model for model in MODELS if getattr(Recipe.default(model, True), field)
               != getattr(Recipe.default(model), field)}
    return listing(False) + (f"; multi-label: {listing(True, differs)}" if differs else "")


def add_kiela_commands(commands) -> None:
    features = commands.add_parser("features", help="extract image features into a store")
    features.add_argument("--manifest", action="append", required=True,
                          help="JSONL/CSV manifest (repeatable)")
    features.add_argument("--store", required=True, help="feature store directory")
    features.add_argument("--backbone", default="efficientnet_lite0",
                          help="image network whose pooled features are stored")
    features.add_argument("--weights", default=PACKAGED,
                          help="state-dict file, 'packaged' (EfficientNet-Lite0) or 'none'")
    features.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE,
                          help="images are resized to this many pixels square")
    features.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    features.add_argument("--skip-bad", action="store_true",
                          help="skip bad records and unreadable images (counted, listed) "
                               "instead of stopping at the first")
    features.add_argument("--quiet", action="store_true", help="no progress bar")
    features.set_defaults(run=_features)

    train = commands.add_parser("train", help="train a paper-003 model, save a checkpoint")
    train.add_argument("--train", required=True, help="training manifest")
    train.add_argument("--store", required=True, help="feature store with its image features")
    train.add_argument("--out", required=True, help="checkpoint directory")
    train.add_argument("--model", default="additive", choices=MODELS,
                       help="the paper-003 model (default: %(default)s)")
    train.add_argument("--multilabel", action="store_true",
                       help="one-vs-all sigmoid loss (implied when an item has several labels)")
    train.add_argument("--valid", default=None,
                       help="validation manifest: scored every epoch, the best epoch is kept")
    train.add_argument("--valid-fraction", type=float, default=0.1,
                       help="without --valid, hold out this seeded share of --train to validate "
                       "(0: no validation, the last epoch is kept; default: %(default)s)")
    train.add_argument("--autotune", action="store_true",
                       help="search the model's recipe on the validation split (fastText's "
                       "-autotune-validation); explicit flags set the first trial")
    train.add_argument("--autotune-duration", type=float, default=60.0,
                       help="autotune's time budget in seconds (default: %(default)s)")
    for name, kind, meaning in (
            ("dim", int, "embedding width H (the mlp's hidden width)"),
            ("epochs", int, "passes over the data"),
            ("lr", float, "initial learning rate (decays linearly to 0)"),
            ("batch_size", int, "minibatch of the autograd models"),
            ("alpha", float, "weight of the image tokens (pq, rspq)"),
            ("ngrams", int, "word n-grams up to this n"), ("buckets", int, "n-gram hash buckets"),
            ("subvectors", int, "PQ subvectors M"), ("centroids", int, "PQ centroids C"),
            ("repetitions", int, "RSPQ repetitions R"),
            ("patience", int, "stop after this many epochs without a better valid score"),
            ("weight_decay", float, "L2 penalty of the autograd models' dense weights"),
            ("dropout", float, "dropout of the mlp's input and hidden layer"),
            ("seed", int, "seed of initialization, shuffling and the validation split")):
        train.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                           help=f"{meaning} (default: {_recipe_defaults(name)})")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                       help=f"of the autograd models (default: {_recipe_defaults('optimizer')})")
    train.add_argument("--gate", choices=RECIPE_GATES, default=None,
                       help="the gating modality of gated and bilinear_gated; auto trains both "
                            "and keeps the better on validation (default: auto)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    classify = commands.add_parser("classify", help="stream a manifest through a checkpoint")
    evaluate = commands.add_parser("eval", help="held-out metrics of a checkpoint")
    for sub in (classify, evaluate):
        sub.add_argument("--checkpoint", required=True,
                         help="checkpoint directory written by mmfast train (required)")
        sub.add_argument("--input", required=True, help="JSONL/CSV manifest")
        sub.add_argument("--store", default=None,
                         help="feature store with the items' image features (default: extract)")
    classify.add_argument("--output", required=True, help="predictions, .jsonl or .csv")
    classify.add_argument("--top-k", type=int, default=1,
                          help="labels written per item, most likely first")
    classify.add_argument("--threshold", type=float, default=None,
                          help="every label scoring at least this (instead of top-k)")
    classify.add_argument("--thresholds", default=None, help="JSON {label: threshold}")
    classify.add_argument("--batch-size", type=int, default=1024,
                          help="items read, classified and written at a time")
    classify.add_argument("--skip-bad", action="store_true",
                          help="skip bad records and unreadable images (counted) instead of "
                               "stopping at the first")
    classify.add_argument("--resume", action="store_true",
                          help="continue the output a killed classify left unfinished (its "
                               "complete rows are kept, their items not classified again)")
    classify.add_argument("--quiet", action="store_true", help="no progress bar")
    classify.set_defaults(run=_classify)
    evaluate.add_argument("--json", action="store_true", help="print the report as one JSON line")
    evaluate.add_argument("--per-class", action="store_true",
                          help="precision, recall, F1 and support of every class")
    evaluate.add_argument("--confusion", default=None,
                          help="write the confusion matrix here (CSV; single-label models)")
    evaluate.add_argument("--plot", default=None,
                          help="write a per-class F1 chart here (.png, .svg, .pdf)")
    evaluate.set_defaults(run=_eval)
