"""The ``mmfast`` command."""

import argparse
import json
import math
import os
import sys
import time

import torch

import mmfast
from mmfast.quant import RSPQ, ProductQuantizer
from mmfast.commands import add_kiela_commands, run_demo
from mmfast.data import write_image_folder_manifest


def _info(args) -> int:
    facts = mmfast.info()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    width = max(map(len, facts))
    for key, value in facts.items():
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        print(f"{key:<{width}}  {value}")
    return 0


def _demo_vectors(num_vectors: int, dim: int, seed: int) -> torch.Tensor:
    """A fixed stand-in for pooled CNN image features: a 64-component Gaussian mixture with
    non-negative (post-ReLU-like) coordinates, L2-normalized, as paper 003 feeds its quantizers."""
    generator = torch.Generator().manual_seed(seed)
    components = torch.randn(64, dim, generator=generator).relu() * 2
    scales = torch.rand(dim, generator=generator) + 0.25  # anisotropic, like real features
    labels = torch.randint(64, (num_vectors,), generator=generator)
    x = (components[labels] + torch.randn(num_vectors, dim, generator=generator) * scales).relu()
    return torch.nn.functional.normalize(x, dim=1)


def _throughput(function, x: torch.Tensor, repeats: int = 3) -> tuple[torch.Tensor, float]:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = function(x)
        best = min(best, time.perf_counter() - start)
    return out, x.shape[0] / best


def _demo_pq(args) -> int:
    torch.manual_seed(args.seed)
    x = _demo_vectors(args.num_vectors, args.dim, args.seed)
    train, held_out = x[: args.num_train], x[args.num_train :]
    print(
        f"mmfast demo: PQ and RSPQ on {len(x)} generated {args.dim}-d image-feature vectors "
        f"({len(train)} to train, {len(held_out)} held out), {torch.get_num_threads()} threads"
    )
    quantizers = {
        f"PQ   M={args.subvectors} C={args.centroids}": ProductQuantizer(
            args.dim, args.subvectors, args.centroids, seed=args.seed
        ),
        f"RSPQ M={args.subvectors} C={args.centroids} R={args.repetitions}": RSPQ(
            args.dim, args.subvectors, args.centroids, args.repetitions, seed=args.seed
        ),
    }
    print(f"{'quantizer':<26} {'train s':>8} {'encode vec/s':>13} {'reference vec/s':>16} "
          f"{'speed-up':>9} {'same codes':>11} {'rel. error':>11}")
    for name, quantizer in quantizers.items():
        start = time.perf_counter()
        quantizer.fit(train, iters=args.iters)
        train_seconds = time.perf_counter() - start
        codes, fused_rate = _throughput(quantizer.encode, held_out)
        with mmfast.backend("reference"):
            reference_codes, reference_rate = _throughput(quantizer.encode, held_out)
        same = (codes == reference_codes).float().mean().item()
        error = quantizer.reconstruction_error(held_out)
        print(f"{name:<26} {train_seconds:>8.2f} {fused_rate:>13,.0f} {reference_rate:>16,.0f} "
              f"{fused_rate / reference_rate:>8.1f}x {same:>10.4%} {error:>11.4f}")
    print("rel. error: mean |x - decode(encode(x))|^2 / mean |x|^2 on the held-out vectors")
    return 0


def _manifest(args) -> int:
    records, train, heldout = write_image_folder_manifest(
        args.image_folder, args.out, args.heldout, args.heldout_fraction, args.seed)
    written = args.out if args.heldout is None else (
        f"{args.out} ({train}) and {args.heldout} ({heldout})")
    skipped = f"; {records.skipped} dangling symlinks skipped" if records.skipped else ""
    print(f"{len(records)} records of {len(records.classes)} classes written to {written}{skipped}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmfast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mmfast {mmfast.__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also MMFAST_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="build facts: version, torch, compiler, ISA, CUDA")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_info)

    demo = commands.add_parser(
        "demo", help="paper 003's models on the embedded emoji data: held-out accuracy and "
        "throughput (--pq: the PQ/RSPQ encoding demo on generated vectors)")
    demo.add_argument("--pq", action="store_true",
                      help="train PQ and RSPQ on generated vectors, report speed and error")
    demo.add_argument("--task", default="group", choices=("group", "subgroup", "tags"),
                      help="emoji task: 9 groups, 99 subgroups, or 113 tags (multi-label)")
    demo.add_argument("--models", default="paper",
                      help="comma-separated models, 'paper' (the nine of paper 003) or 'all' "
                           "(and the mlp baseline)")
    demo.add_argument("--epochs", type=int, default=None, help="override every model's epochs")
    demo.add_argument("--limit", type=int, default=None, help="use only the first N items")
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
    demo.set_defaults(run=lambda args: _demo_pq(args) if args.pq else run_demo(args))
    add_kiela_commands(commands)

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
    manifest.set_defaults(run=_manifest)
    return parser


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
    if getattr(args, "pq", False) and args.num_train >= args.num_vectors:
        parser.error("--num-train must be smaller than --num-vectors")
    for name in ("batch_size", "top_k", "epochs", "dim", "patience", "num_vectors", "num_train",
                 "iters", "subvectors", "centroids", "repetitions", "buckets"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1, got {value}")
    for name in ("lr", "autotune_duration"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')}: expected a finite number > 0, got {value}")
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
        return args.run(args)
    except USER_ERRORS as error:
        if args.debug or os.environ.get("MMFAST_DEBUG", "") not in ("", "0"):
            raise
        # a KeyError's str() is the repr of its message
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"mmfast {args.command}: {' '.join(str(message).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
