"""The ``mmfast`` command: its parser and checks, without torch, so ``--help``, ``--version``
and a bad argument answer at once; the commands themselves (``mmfast.commands``) load torch
once the arguments are good."""

import argparse
import importlib
import math
import os
import sys

import mmfast
from mmfast.defaults import (ANANETS, DEMO_IMAGE_SIZE, DEMO_PAPERS, IMAGE_PRECISIONS,
                             MANY_LABEL_RECIPES, MANY_LABELS, OPTIMIZERS, PACKAGED, PROBE_L2,
                             RECIPE_GATES, TEXT_FEATURES, WEIGHT_DECAY_PER_CLASS,
                             is_text_features, reads_setting)
from mmfast.systems import SYSTEMS


def _systems_with(field: str) -> tuple[str, ...]:
    """The systems whose recipe has ``field`` and that read it."""
    return tuple(name for name, system in SYSTEMS.items()
                 if reads_setting(system.recipe, name, field))


def _recipe_defaults(field: str) -> str:
    """``field``'s default in every system's recipe that has it, e.g. "50 for text, pq; 100
    for max", then where multi-label tasks differ, e.g. "; multi-label: 0.4 for text"."""
    def value(name: str, multilabel: bool):
        return getattr(SYSTEMS[name].default_recipe(multilabel), field)

    def listing(names, multilabel: bool) -> str:
        names_of: dict = {}
        for name in names:
            names_of.setdefault(value(name, multilabel), []).append(name)
        if len(names_of) == 1 and not multilabel:  # one value for every system that has it
            return str(next(iter(names_of)))
        return "; ".join(f"{value} for {', '.join(names)}" for value, names in names_of.items())

    having = _systems_with(field)
    differs = tuple(name for name in having if value(name, True) != value(name, False))
    # the defaults that follow the task's label count, which the listing cannot show
    by_count = [f"{name}: {recipe[field]} from {MANY_LABELS} labels on"
                for name, recipe in MANY_LABEL_RECIPES.items() if field in recipe]
    if field == "weight_decay":
        by_count += [f"{name}: {c} / labels" for name, c in WEIGHT_DECAY_PER_CLASS.items()]
    return (listing(having, False) + (f"; multi-label: {listing(differs, True)}" if differs else "")
            + "".join(f"; {rule}" for rule in by_count))


def _scale_or_auto(text: str) -> float | str:
    """A multiple > 0, or "auto" (the recipe's choice on validation)."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0 or auto, got {text!r}")
    return value


# The recipe settings `mmfast train` takes as flags: (field, type, meaning).
RECIPE_FLAGS = (
    ("dim", int, "embedding width H (mlp, cacnet, ananet: hidden units)"),
    ("epochs", int, "passes over the data"),
    ("lr", float, "initial learning rate (fastText's models: decays linearly to 0; text on "
                  "single-label tasks: 0.13 sqrt(labels), within 0.7-1.3, bilinear: 0.05 "
                  "sqrt(labels), within 0.2-0.5; cacnet: per label, "
                  "times the label count)"),
    ("batch_size", int, "minibatch of the autograd models"),
    ("alpha", float, "weight of the image tokens"),
    ("ngrams", int, "word n-grams up to this n"), ("buckets", int, "n-gram hash buckets"),
    ("subvectors", int, "PQ subvectors M"), ("centroids", int, "PQ centroids C"),
    ("repetitions", int, "RSPQ repetitions R"),
    ("patience", int, "stop after this many epochs without a better valid score"),
    ("weight_decay", float, "L2 penalty of the autograd models' dense weights"),
    ("text_lr_scale", _scale_or_auto, "the autograd models' text embedding table steps at this "
                                      "times lr; auto trains at 1 and 5 and keeps the better "
                                      "on validation"),
    ("dropout", float, "dropout of the mlp's input and hidden layer"),
    ("image_dim", int, "image features reduced by PCA to this many components"),
    ("text_features", str, f"one vector per text: one of {', '.join(TEXT_FEATURES)} (auto: "
                           "hashed and word2vec, the better on validation)"),
    ("text_dim", int, "width of hashed or word2vec text features"),
    ("num_words", int, "the words of a text ananet reads, from its start"),
    ("gamma", float, "cacnet's cross-active threshold at the start"),
    ("gamma_end", float, "cacnet's cross-active threshold at the end"),
    ("mu", float, "weight of the text reconstruction (joint_ae, crossmodal_ae_ii)"),
    ("l2", float, "the label probes' L2 penalty (the autoencoders)"),
    ("average_every", int, "under torchrun: examples of a rank's share between merges of the "
                           "ranks' updates (None: 8 merges an epoch)"),
    ("seed", int, "seed of initialization, shuffling and the validation split"),
)


def add_kiela_commands(commands) -> None:
    features = commands.add_parser("features", help="extract image features into a store")
    features.add_argument("--manifest", action="append", required=True,
                          help="manifest: JSONL, CSV, Parquet or Arrow (repeatable)")
    features.add_argument("--store", required=True, help="feature store directory")
    features.add_argument("--backbone", default="efficientnet_lite0",
                          help="image network whose pooled features are stored")
    features.add_argument("--weights", default=PACKAGED,
                          help="state-dict file, 'packaged' (EfficientNet-Lite0) or 'none'")
    features.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE,
                          help="images are resized to this many pixels square")
    features.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    features.add_argument("--compile", action="store_true",
                          help="run the backbone through torch.compile: on a CPU 1.05-1.3x "
                               "the eager extraction after a one-time compile of ~15 s, so it "
                               "pays from some 30k-150k images (pooled features only)")
    features.add_argument("--precision", choices=IMAGE_PRECISIONS, default="fp32",
                          help="the backbone's number format: bf16 ran about 2.2x fp32's speed "
                               "on a CPU with AVX512-BF16 (slower on one without), features at "
                               "cosine ~0.999 to fp32's; the store records it, and classify "
                               "extracts new images as the model's store did (pooled and grid "
                               "features)")
    features.add_argument("--regions", choices=("none", "grid", "detector"), default="none",
                          help="store each image's regions (what the ananet systems read), not "
                               "one pooled vector: grid, the cells [Kr, 1280] of "
                               "EfficientNet-Lite0's last feature map (--backbone and --weights "
                               "do not apply); detector, the 36 box-head features [36, 1024] of "
                               "torchvision's Faster R-CNN, its weights a local file (--weights)")
    features.add_argument("--skip-bad", action="store_true",
                          help="skip bad records and unreadable images (counted, listed) "
                               "instead of stopping at the first")
    features.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                          help="extract every N-th distinct item from the I-th (0-based) into "
                               "STORE.shard-I-of-N; mmfast merge --store joins them (under "
                               "torchrun each rank takes its share and rank 0 merges)")
    features.add_argument("--quiet", action="store_true", help="no progress bar")
    features.set_defaults(run="_features")

    train = commands.add_parser("train", help="train a system, save a checkpoint")
    train.add_argument("--train", required=True,
                       help="training manifest: JSONL, CSV, Parquet or Arrow")
    train.add_argument("--store", default=None, help="feature store with the items' image "
                       "features (needed by every system that reads images)")
    train.add_argument("--out", required=True, help="checkpoint directory")
    train.add_argument("--model", "--system", dest="model", default="additive",
                       choices=tuple(SYSTEMS), metavar="SYSTEM",
                       help="the system to train, one of " + ", ".join(SYSTEMS)
                       + " (mmfast models describes them; default: %(default)s)")
    train.add_argument("--multilabel", action="store_true",
                       help="one-vs-all sigmoid loss (implied when an item has several labels)")
    train.add_argument("--valid", default=None,
                       help="validation manifest: scored every epoch, the best epoch is kept")
    train.add_argument("--valid-fraction", type=float, default=0.1,
                       help="without --valid, hold out this seeded share of --train to validate "
                       "(0: no validation, the last epoch is kept; default: %(default)s)")
    train.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                       help="after validation chose the epoch (and autotune the recipe), train "
                       "once more on the training and validation items together, on the same "
                       "learning-rate schedule, up to that epoch, as the scikit-learn "
                       "baselines refit on all their training data; it costs a second run. "
                       "Default: refit when the validation split is held out of --train (not "
                       "--valid) and the kept epoch is past the first quarter of the epochs: "
                       "held out, +0.8 point on average there, -1.1 before it")
    train.add_argument("--autotune", action="store_true",
                       help="search the system's recipe on the validation split (fastText's "
                       "-autotune-validation); explicit flags set the first trial")
    train.add_argument("--autotune-duration", type=float, default=60.0,
                       help="autotune's time budget in seconds (default: %(default)s)")
    train.add_argument("--autotune-trials", type=int, default=None,
                       help="stop autotune after this many trials (or at the time budget, "
                       "whichever comes first): a seed then gives the same search every run")
    for name, kind, meaning in RECIPE_FLAGS:
        default = (f"chosen on validation among {', '.join(f'{l2:g}' for l2 in PROBE_L2)}; "
                   "1 without" if name == "l2"
                   else _recipe_defaults(name))
        train.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                           help=f"{meaning} (default: {default})")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                       help=f"of the autograd models (default: {_recipe_defaults('optimizer')})")
    train.add_argument("--gate", choices=RECIPE_GATES, default=None,
                       help="the gating modality of gated and bilinear_gated; auto trains both "
                            "and keeps the better on validation (default: auto)")
    train.add_argument("--checkpoint-every", type=int, default=None, metavar="EPOCHS",
                       help="save the training state every EPOCHS epochs (and each model's "
                            "last) into OUT/training-state, for --resume; removed once the "
                            "checkpoint is written")
    train.add_argument("--resume", action="store_true",
                       help="go on from the training state a killed run of the same system, "
                            "recipe, seed and data saved (--checkpoint-every); with "
                            "--checkpoint-every and no state yet, train from the start")
    train.add_argument("--rank-data", choices=("all", "share"), default="all",
                       help="under torchrun: all, every rank reads the whole manifest and "
                            "feature rows, and the steps are one process's on the same batches; "
                            "share, each rank reads every world-size-th record (as classify "
                            "does) and steps on its own shuffled rows, the fits (vocabulary, "
                            "means, quantizers, PCA, Word2Vec) and the validation scores reduced "
                            "over the ranks: for data larger than one machine's memory "
                            "(default: %(default)s)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run="_train")

    classify = commands.add_parser("classify", help="stream a manifest through a checkpoint")
    evaluate = commands.add_parser("eval", help="held-out metrics of a checkpoint")
    for sub in (classify, evaluate):
        sub.add_argument("--checkpoint", required=True,
                         help="checkpoint directory written by mmfast train or "
                              "Classifier.save, any system (required)")
        sub.add_argument("--input", required=True,
                         help="manifest: JSONL, CSV, Parquet or Arrow")
        sub.add_argument("--store", default=None,
                         help="feature store with the items' image features (default: extract)")
    classify.add_argument("--output", required=True, help="predictions, .jsonl or .csv")
    classify.add_argument("--top-k", type=int, default=1,
                          help="labels written per item, most likely first")
    classify.add_argument("--threshold", type=float, default=None,
                          help="every label scoring at least this (instead of top-k)")
    classify.add_argument("--thresholds", default=None, help="JSON {label: threshold}")
    classify.add_argument("--batch-size", type=int, default=8192,
                          help="items read, classified and written at a time")
    classify.add_argument("--skip-bad", action="store_true",
                          help="skip bad records and unreadable images (counted) instead of "
                               "stopping at the first")
    classify.add_argument("--resume", action="store_true",
                          help="continue the output a killed classify left unfinished (its "
                               "complete rows are kept, their items not classified again)")
    classify.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                          help="classify every N-th record from the I-th (0-based) into "
                               "OUTPUT.shard-I-of-N; mmfast merge joins the N parts (under "
                               "torchrun each rank takes its share and rank 0 merges, no flag "
                               "needed)")
    classify.add_argument("--quiet", action="store_true", help="no progress bar")
    classify.set_defaults(run="_classify")
    evaluate.add_argument("--json", action="store_true", help="print the report as one JSON line")
    evaluate.add_argument("--per-class", action="store_true",
                          help="precision, recall, F1 and support of every class")
    evaluate.add_argument("--confusion", default=None,
                          help="write the confusion matrix here (CSV; single-label models)")
    evaluate.add_argument("--plot", default=None,
                          help="write a per-class F1 chart here (.png, .svg, .pdf)")
    evaluate.set_defaults(run="_eval")
    for sub in (features, train, classify, evaluate):
        sub.add_argument("--columns", type=_columns, default=None, metavar="FIELD=COLUMN,...",
                         help="the manifest's own column (key) names of the fields id, image, "
                              "text, labels, e.g. text=caption,labels=label (default: the "
                              "field names)")
        for field, flag in _COLUMN_FLAGS:
            sub.add_argument(f"--{flag}-column", default=None, metavar="COLUMN",
                             help=f"the manifest's column of the {flag}s (as --columns "
                                  f"{field}=COLUMN)")
        _add_device(sub)


def _add_device(command) -> None:
    command.add_argument(
        "--device", type=_device, default="auto",
        help="where the networks run: auto (a GPU when torch sees one and mmfast's CUDA kernels "
             "were built, else the CPU), cpu, cuda or cuda:N; fastText's models (text, pq, "
             "rspq) train by Hogwild SGD on the CPU whatever it says, and under torchrun every "
             "rank runs on the CPU (default: %(default)s)")


def _device(value: str) -> str:
    kind, _, index = value.partition(":")
    if (value in ("auto", "cpu", "cuda")
            or (kind == "cuda" and index.isdigit() and index.isascii())):
        return value
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")


# A record's fields and their --FLAG-column options (a record's labels: --label-column).
_COLUMN_FLAGS = (("id", "id"), ("image", "image"), ("text", "text"), ("labels", "label"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmfast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mmfast {mmfast.__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also MMFAST_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="build facts: version, torch, compiler, ISA, CUDA")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run="_info")

    models = commands.add_parser("models", help="the systems mmfast train --model takes: paper, "
                                 "task kinds, inputs")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(run="_models")

    demo = commands.add_parser(
        "demo", help="a paper's table on the embedded emoji data: paper 003's models by default, "
        "--paper all for the four papers (--pq: the PQ/RSPQ encoding demo on generated vectors)")
    demo.add_argument("--paper", default="003", choices=(*DEMO_PAPERS, "all"),
                      help="003: Kiela et al.'s nine models (held-out accuracy, throughput); "
                      "000: CACNet's Table 4; 002: the autoencoders' Table 2; 004: AnANet's "
                      "Table IV; all: the four, one after the other")
    demo.add_argument("--pq", action="store_true",
                      help="train PQ and RSPQ on generated vectors, report speed and error")
    demo.add_argument("--task", default="group", choices=("group", "subgroup", "tags"),
                      help="paper 003's emoji task: 9 groups, 99 subgroups, or 113 tags "
                           "(multi-label)")
    demo.add_argument("--models", default="paper",
                      help="paper 003: comma-separated models, 'paper' (the nine of paper 003) "
                           "or 'all' (and the mlp baseline)")
    demo.add_argument("--epochs", type=int, default=None,
                      help="override every model's epochs (papers 003, 000, 004)")
    demo.add_argument("--limit", type=int, default=None,
                      help="paper 003: use only the first N items")
    demo.add_argument("--num-vectors", type=int, default=60_000,
                      help="--pq: vectors generated and encoded")
    demo.add_argument("--num-train", type=int, default=20_000,
                      help="--pq: of them, the ones the quantizers are fitted on")
    demo.add_argument("--dim", type=int, default=512, help="--pq: vector dimension")
    demo.add_argument("--subvectors", type=int, default=8, help="--pq: subvectors M")
    demo.add_argument("--centroids", type=int, default=256, help="--pq: centroids per subvector")
    demo.add_argument("--repetitions", type=int, default=4, help="--pq: RSPQ repetitions R")
    demo.add_argument("--iters", type=int, default=20, help="--pq: k-means iterations")
    demo.add_argument("--seed", type=int, default=0, help="--pq: seed of the data and k-means")
    _add_device(demo)
    demo.set_defaults(run="_demo")
    add_kiela_commands(commands)

    merge = commands.add_parser(
        "merge", help="join the parts of a sharded classify (OUTPUT.shard-I-of-N) into OUTPUT, "
        "or of a sharded features run (STORE.shard-I-of-N) into STORE")
    target = merge.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", help="the classify output the shards were given; its parts "
                                         "are found beside it")
    target.add_argument("--store", help="the feature store the shards were given; their stores "
                                        "are found beside it and joined after its own items")
    merge.add_argument("--keep-parts", action="store_true",
                       help="leave the parts (default: removed once the output is written)")
    merge.set_defaults(run="_merge")

    manifest = commands.add_parser(
        "manifest", help="write a JSONL manifest of an image folder (one sub-folder per class)")
    manifest.add_argument("--image-folder", required=True, help="folder of class folders, "
                          "images found recursively in each (required)")
    manifest.add_argument("--out", required=True, help="manifest to write: all records, or the "
                          "train side with --heldout (required)")
    manifest.add_argument("--heldout", default=None,
                          help="also split off a held-out manifest here (default: no split)")
    manifest.add_argument("--heldout-fraction", type=float, default=0.2,
                          help="share of the records held out, in [0, 1)")
    manifest.add_argument("--seed", type=int, default=0,
                          help="seed of the hash that splits the records")
    manifest.set_defaults(run="_manifest")
    for command in commands.choices.values():
        command.add_argument("--threads", type=int, default=None,
                             help="CPU threads of the kernels and torch (default: torch's, "
                                  "one per core)")
    return parser


def _shard(value: str) -> tuple[int, int]:
    from mmfast.sharding import parse_shard

    try:
        return parse_shard(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _columns(value: str) -> dict[str, str]:
    """``--columns``' "field=column,..." as {field: column}."""
    fields = ("id", "image", "text", "labels")
    mapping = {}
    for part in value.split(","):
        field, _, column = part.partition("=")
        if field.strip() not in fields or not column.strip():
            raise argparse.ArgumentTypeError(
                f"expected FIELD=COLUMN pairs with FIELD one of {', '.join(fields)}, got "
                f"{part!r}")
        mapping[field.strip()] = column.strip()
    return mapping


# What a user's input can cause: a bad file, record, checkpoint or value. They print as one
# line (DESIGN 6); anything else is a bug in mmfast and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, LookupError, OSError, UnicodeError)


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, unless the help names it already or there is
    none to name (None, an off flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, ``mmfast <command>: <what is wrong>``, exit status 2; option
    help with defaults (``_HelpFormatter``), for every subcommand too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _check_values(parser: argparse.ArgumentParser, args) -> None:
    """Refuse before any work the values that would silently produce nothing or lose data."""
    parser.prog = f"mmfast {args.command}"
    if hasattr(args, "columns"):  # --text-column etc. join --columns
        named = {field: getattr(args, f"{flag}_column") for field, flag in _COLUMN_FLAGS}
        args.columns = {**(args.columns or {}),
                        **{field: column for field, column in named.items() if column}} or None
    if getattr(args, "pq", False) and args.num_train >= args.num_vectors:
        parser.error("--num-train must be smaller than --num-vectors")
    _check_at_least_one(parser, args, ("threads", "batch_size", "top_k", "epochs", "dim",
                                       "patience", "num_vectors", "num_train", "iters",
                                       "subvectors", "centroids", "repetitions", "buckets",
                                       "autotune_trials"))
    _check_positive(parser, args, ("lr", "autotune_duration"))
    if args.command == "train":
        _check_recipe_flags(parser, args)
        if args.checkpoint_every is not None and args.checkpoint_every < 1:
            parser.error(f"--checkpoint-every: expected an integer >= 1 (epochs), got "
                         f"{args.checkpoint_every}")
        if args.autotune_trials is not None and not args.autotune:
            parser.error("--autotune-trials: expected with --autotune, got it alone (it would "
                         "be ignored)")
        if args.autotune and (args.checkpoint_every or args.resume):
            parser.error(f"--{'resume' if args.resume else 'checkpoint-every'}: expected a "
                         "run without --autotune, got both (autotune's trials are short and "
                         "not resumed: resume the recipe it chose)")
    dropout = getattr(args, "dropout", None)
    if dropout is not None and not 0 <= dropout < 1:
        parser.error(f"--dropout: expected a number in [0, 1), got {dropout}")
    fraction = getattr(args, "valid_fraction", None)
    if fraction is not None and not 0 <= fraction < 1:
        parser.error(f"--valid-fraction: expected a number in [0, 1), got {fraction}")
    threshold = getattr(args, "threshold", None)
    if threshold is not None and not 0 <= threshold <= 1:
        parser.error(f"--threshold: expected a probability in [0, 1], got {threshold}")
    buckets = getattr(args, "buckets", None)
    if buckets is not None and buckets > _MAX_BUCKETS:
        parser.error(f"--buckets: expected at most {_MAX_BUCKETS:,} (the n-gram hash has 32 bits),"
                     f" got {buckets:,}")
    _check_paths(parser, args)


_MAX_BUCKETS = 2**32


def _check_at_least_one(parser: argparse.ArgumentParser, args, names) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {value}")


def _check_positive(parser: argparse.ArgumentParser, args, names) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')}: expected a finite number > 0, got {value}")


def _check_recipe_flags(parser: argparse.ArgumentParser, args) -> None:
    """A setting the chosen system does not have would be ignored: refuse it, naming the
    systems that have it."""
    for name in (*(flag[0] for flag in RECIPE_FLAGS), "optimizer", "gate"):
        if getattr(args, name) is not None and args.model not in _systems_with(name):
            parser.error(f"--{name.replace('_', '-')}: the {args.model} system has no such "
                         f"setting (it is one of {', '.join(_systems_with(name))})")
    if args.text_features is not None and not is_text_features(args.text_features):
        parser.error(f"--text-features: expected one of {', '.join(TEXT_FEATURES)}, got "
                     f"{args.text_features!r}")
    _check_at_least_one(parser, args, ("image_dim", "text_dim", "num_words", "average_every"))
    for name in ("gamma", "gamma_end"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 1:
            parser.error(f"--{name.replace('_', '-')}: expected a number in [0, 1], got {value}")
    _check_positive(parser, args, ("mu", "l2"))
    if args.dim is not None and args.model in ("cacnet", *ANANETS) and args.dim % 2:
        parser.error(f"--dim: {args.model}'s hidden units come in two halves: expected an even "
                     f"number, got {args.dim}")


def _check_paths(parser: argparse.ArgumentParser, args) -> None:
    """An output file must not be an input, another output, or a folder: each would be lost."""
    inputs = {name: getattr(args, name, None) for name in ("input", "thresholds", "train", "valid")}
    inputs.update({f"manifest {path}": path for path in getattr(args, "manifest", None) or []})
    outputs = {name: getattr(args, name, None) for name in ("output", "confusion", "plot",
                                                             "heldout")}
    if args.command == "manifest":
        outputs["out"] = args.out
    seen = {}
    for name, path in outputs.items():
        if not path:
            continue
        flag = f"--{name.replace('_', '-')}"
        where = os.path.abspath(path)
        for other, source in inputs.items():
            if source and os.path.abspath(source) == where:
                parser.error(f"{flag}: expected a file other than --{other}, got {path} for both "
                             f"(it would replace the --{other} file)")
        if where in seen:
            parser.error(f"{flag}: expected a file other than {seen[where]}, got {path} for both")
        if os.path.isdir(where):
            parser.error(f"{flag}: expected a file to write, got the folder {path}")
        seen[where] = flag


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_values(parser, args)
    try:
        commands = importlib.import_module("mmfast.commands")  # torch and the models
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        return getattr(commands, args.run)(args)
    except USER_ERRORS as error:
        if args.debug or os.environ.get("MMFAST_DEBUG", "") not in ("", "0"):
            raise
        # a KeyError's str() is the repr of its message
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"mmfast {args.command}: {' '.join(str(message).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
