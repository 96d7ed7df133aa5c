"""What each ``mmfast`` command runs, given the arguments ``mmfast.cli`` parsed and checked:
info, models, demo, features, train, classify, merge, eval and manifest."""

import collections
import contextlib
import csv
import gc
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields
from pathlib import Path

import torch
from tqdm import tqdm

import mmfast
from mmfast import metrics, predictions, sharding, systems
from mmfast._io import atomic_path, locked, stale_temporaries
from mmfast.data import (FeatureStore, Manifest, read_manifest, validation_split,
                         write_image_folder_manifest)
from mmfast.defaults import DEMO_PAPERS, PACKAGED
from mmfast.devices import resolve_device
from mmfast.features import (BadImageError, DetectorRegionFeatureExtractor,
                             GridRegionFeatureExtractor, ImageFeatureExtractor,
                             extractor_from_config, image_store,
                             store_features)
from mmfast.report import format_report, plot_report, write_confusion_csv
from mmfast.systems.autotune import autotune
from mmfast.train.distributed import data_sharded, global_sum, share_sizes, sharded_data


def _demo(args) -> int:
    from mmfast.experiments import ananet_demo, autoencoder_demo, cacnet_demo, kiela_demo, pq_demo

    if args.pq:
        pq_demo.run(args.num_vectors, args.num_train, args.dim, args.subvectors,
                    args.centroids, args.repetitions, args.iters, args.seed)
        return 0
    papers = DEMO_PAPERS if args.paper == "all" else (args.paper,)
    device = _device(args)
    start = time.perf_counter()
    for number, paper in enumerate(papers):
        if number:
            print()
        if paper == "003":
            kiela_demo.run(args.task, args.models, args.epochs, args.limit, device)
        elif paper == "000":
            cacnet_demo.run(args.epochs or 30, device)
        elif paper == "002":
            autoencoder_demo.run(device=device)
        else:
            ananet_demo.run(args.epochs, device=device)
    if len(papers) > 1:
        print(f"\nfour papers in {time.perf_counter() - start:.1f} s")
    return 0


def _device(args) -> torch.device:
    """``--device`` as a ``torch.device``. Under torchrun a rank's GPU is cuda:LOCAL_RANK (its
    training ranks then average over NCCL, ``_process_group_backend``)."""
    launched = sharding.torchrun_shard()
    device = resolve_device(args.device)
    if launched and device.type == "cuda" and device.index is None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local % torch.cuda.device_count())
    return device


def _process_group_backend(device: torch.device) -> str:
    """The torchrun training ranks' process group: gloo on the CPU; with the model on a GPU,
    NCCL for the GPU tensors (DistributedDataParallel's gradients, gathered scores) and gloo
    still for the CPU ones (counts, shares, the vocabulary, sparse gradients:
    ``distributed.average_hook``)."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def _extractor(args) -> ImageFeatureExtractor:
    weights, device = None if args.weights == "none" else args.weights, _device(args)
    if args.regions == "grid":
        return GridRegionFeatureExtractor(args.image_size, args.batch_size, device, args.precision)
    if args.regions == "detector":
        if args.precision != "fp32":
            raise ValueError(f"--precision {args.precision}: expected fp32 with --regions "
                             "detector (the detector runs in fp32), got another")
        if weights in (None, PACKAGED):
            raise ValueError("--regions detector: --weights must name a local state-dict file of "
                             "torchvision's fasterrcnn_resnet50_fpn (random weights give "
                             "meaningless regions)")
        return DetectorRegionFeatureExtractor(weights, image_size=args.image_size,
                                              batch_size=args.batch_size, device=device)
    return ImageFeatureExtractor(args.backbone, weights, args.image_size, args.batch_size,
                                 device, compile=args.compile, precision=args.precision)


_NAMED_SKIPS = 10  # skipped images listed by manifest line


def _features(args) -> int:
    manifests = [Manifest(path, skip_bad=args.skip_bad, columns=args.columns)
                 for path in args.manifest]
    where, records = {}, []
    for manifest in manifests:
        for line, record in manifest.numbered():
            where.setdefault(record.id, line)
            records.append(record)
    launched = sharding.torchrun_shard()  # under torchrun: this rank's share, merged by rank 0
    shard = args.shard or launched
    directory = args.store if shard is None else sharding.part_path(args.store, shard)
    start, skipped = time.perf_counter(), []
    try:
        store = image_store(records, directory, _extractor(args), progress=not args.quiet,
                            skip_bad=args.skip_bad, skipped=skipped, shard=shard)
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
    if launched and args.shard is None:
        _merge_ranks(args.store, launched, sharding.merge_stores)
    return 0


def _validation_split(args, records: list, share: tuple[int, int] | None
                      ) -> tuple[list, list]:
    """``(train, valid)``: ``--valid``'s records, or a seeded ``--valid-fraction`` of the
    training manifest (none when 0); this rank's ``share`` of each when the ranks read shares
    (the fraction's split is by record, so the shares' splits make the whole's)."""
    if args.valid:
        return records, read_manifest(args.valid, columns=args.columns, shard=share)
    if args.valid_fraction == 0:
        return records, []
    train, valid = validation_split(records, args.valid_fraction, seed=args.seed or 0)
    train_count, valid_count = _split_sizes(train, valid)
    if not train_count or not valid_count:
        raise ValueError(f"--valid-fraction {args.valid_fraction} of {train_count + valid_count} "
                         f"items leaves {train_count} to train and {valid_count} to validate: "
                         "pass --valid or --valid-fraction 0")
    return train, valid


def _split_sizes(train: list, valid: list) -> tuple[int, int]:
    """The items of the train and validation splits, over every rank's share when the ranks
    read shares."""
    train_count, valid_count = global_sum(torch.tensor([len(train), len(valid)])).tolist()
    return train_count, valid_count


def _train(args) -> int:
    system = systems.get(args.model)
    launched = sharding.torchrun_shard()
    if launched and args.autotune:
        raise ValueError("torchrun: --autotune searches in one process: run it without "
                         "torchrun, then train the recipe it chose under torchrun")
    share = launched if launched and args.rank_data == "share" else None
    records = read_manifest(args.train, columns=args.columns, shard=share)
    if not records:
        raise ValueError(f"--train {args.train}: expected training items, got an empty manifest"
                         + (f" share at rank {share[0]} of {share[1]}: use fewer ranks"
                            if share else ""))
    if system.image and not args.store:
        raise ValueError(f"--store: the {system.name} system reads image features: pass the "
                         "feature store `mmfast features` wrote for this manifest"
                         + (" with --regions grid" if system.image == systems.REGIONS else ""))
    store = FeatureStore(args.store) if system.image else None
    multilabel = args.multilabel or any(len(r.labels) > 1 for r in records)
    labels = sorted({label for record in records for label in record.labels})
    if launched:
        return _train_distributed(args, system, records, store, multilabel, labels, launched)
    with locked(args.out, "another mmfast train"):
        return _train_locked(args, system, records, store, multilabel, labels)


def _train_distributed(args, system, records, store, multilabel, labels,
                       shard: tuple[int, int]) -> int:
    """Under torchrun: every rank reads the whole manifest (one vocabulary, one split) and
    trains on its share of each epoch's shuffle (the Hogwild-trained models merge their
    updates; the others average their gradients every step, as DistributedDataParallel does),
    so all ranks validate the same model; rank 0 alone writes the checkpoint and reports.
    With --rank-data share each rank read only its share of the manifests: the task's labels
    are joined here, and the fits and scores over the whole split reduced over the ranks
    (``distributed.sharded_data``)."""
    import torch.distributed as dist

    device = _device(args)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(_process_group_backend(device))
    try:
        sharded = contextlib.nullcontext()
        if args.rank_data == "share":
            tasks: list = [None] * shard[1]
            dist.all_gather_object(tasks, (labels, multilabel))
            labels = sorted({label for part, _ in tasks for label in part})
            multilabel = any(part for _, part in tasks)
            sharded = sharded_data()
        with sharded:
            if shard[0] != 0:  # the other ranks train and stay quiet
                args.quiet = True
                status = _train_locked(args, system, records, store, multilabel, labels,
                                       save=False)
            else:
                with locked(args.out, "another mmfast train"):
                    status = _train_locked(args, system, records, store, multilabel, labels)
        # the ranks leave together: none tears its connections down while rank 0 still writes
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Once DistributedDataParallel has run, the gloo group's threads outlive
    # destroy_process_group (torch 2.14: 'pt_gloo_runloop' and 'gloo_tcp_loop' still run), and
    # at interpreter exit about one rank in 40 here aborted ("terminate called without an
    # active exception", SIGABRT), failing the job after its checkpoint was written. A rank
    # that finished leaves without the interpreter's teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _train_locked(args, system, records, store, multilabel, labels, save: bool = True) -> int:
    share = sharding.torchrun_shard() if data_sharded() else None
    train_records, valid_records = _validation_split(args, records, share)
    train_count, valid_count = _split_sizes(train_records, valid_records)
    if share and not train_records:
        raise ValueError(f"--rank-data share: rank {share[0]}'s share of the {train_count} "
                         f"training items is empty: use fewer than {share[1]} ranks")
    features = (lambda split: store_features(store, split)) if store else (lambda split: None)
    # a rank whose share holds no validation item still scores (nothing) with the others
    valid = (valid_records, features(valid_records)) if valid_count else None
    overrides = {f.name: getattr(args, f.name) for f in fields(system.recipe)
                 if f.name != "model" and getattr(args, f.name, None) is not None}
    recipe = system.default_recipe(multilabel, len(labels), **overrides)
    train = (train_records, features(train_records))
    state = _training_state(args, recipe, multilabel, labels, train_records, valid_records)
    device = _device(args)
    for flag in ("autotune", "refit"):
        if getattr(args, flag) and valid is None:
            raise ValueError(f"--{flag} needs a validation split: pass --valid or a "
                             "--valid-fraction above 0")
    if args.autotune:
        result = autotune(args.model, *train, labels, multilabel, valid,
                          duration=args.autotune_duration, seed=recipe.seed,
                          max_trials=args.autotune_trials, base=recipe,
                          progress=not args.quiet, device=device)
        trained = result.trained
        seconds = trained.stats["autotune"]["seconds"]
        print(f"autotune: {len(result.trials)} trials in {seconds:.1f} s, best "
              f"valid {result.metric} {result.score:.4f}; recipe "
              f"{json.dumps(asdict(result.recipe))}")
    else:
        trained = system.fit(recipe, train, labels, multilabel, valid, progress=not args.quiet,
                             state=state, device=device)
    if valid is not None:
        trained.stats["valid_items"] = valid_count
    # unasked, a refit gives back the share of --train that validated (not a --valid set the
    # user keeps apart) where the kept epoch says it pays
    unasked = args.refit is None and valid is not None and args.valid is None
    if args.refit or (unasked and system.refit_pays(trained)):
        trained = system.refit(trained, train, valid, progress=not args.quiet, device=device)
        trained.stats["refit"]["items"] = train_count + valid_count  # every rank's share
    # every rank's count, gathered by every rank (a collective) before the others leave
    shares = (f" (the ranks' shares: {', '.join(map(str, share_sizes(len(train_records))))})"
              if share else "")
    if not save:
        return 0
    trained.save(args.out, extractor=store.meta.get("extractor") if store else None)
    if state is not None:
        state.remove()
    stats = trained.stats
    print(f"trained {args.model} on {train_count} items{shares} in {stats['seconds']:.2f} s "
          f"({stats['items_per_s']:,.0f} items/s); checkpoint {args.out}")
    metric, history = stats["metric"], stats["history"]
    if valid is not None:
        best = next(row for row in history if row["epoch"] == stats["best_epoch"])
        print(f"kept epoch {stats['best_epoch']} of {history[-1]['epoch']}: valid {metric} "
              f"{stats['valid_score']:.4f} on {valid_count} items, train "
              f"{best['train_' + metric]:.4f}")
    else:
        print(f"no validation split: kept the last epoch, train {metric} "
              f"{history[-1]['train_' + metric]:.4f}")
    if "refit" in stats:
        refit = stats["refit"]
        print(f"refit on the {refit['items']} training and validation items up to epoch "
              f"{refit['epochs']} of {trained.recipe.epochs} in {refit['seconds']:.2f} s")
    elif unasked and system.chooses_epochs:
        print(f"no refit: the kept epoch is in the first {systems.REFIT_FROM:.0%} of the "
              f"{trained.recipe.epochs} epochs, where a refit does not find it again (--refit "
              "forces one)")
    return 0


TRAINING_STATE = "training-state"  # in --out: what --checkpoint-every saves, --resume reads


def _training_state(args, recipe, multilabel, labels, train_records, valid_records):
    """The run's ``TrainingState`` in OUT/training-state (None without --checkpoint-every or
    --resume): a resumed run must be this one, the same system, recipe (seed included), task
    and data (its records, hashed)."""
    if not (args.checkpoint_every or args.resume):
        return None
    from mmfast.train.resume import TrainingState

    identity = {"system": args.model, "recipe": asdict(recipe), "multilabel": multilabel,
                "labels": labels, "train": _digest(train_records),
                "valid": _digest(valid_records)}
    return TrainingState(Path(args.out) / TRAINING_STATE, identity, args.checkpoint_every,
                         args.resume)


def _digest(records) -> str:
    """``"N items, sha256 <16 hex>"`` of the records' ids, images, texts and labels; when the
    ranks read shares, every rank's, joined (the run's data, the same on every rank)."""
    import hashlib

    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps([record.id, record.image, record.text,
                                  list(record.labels)]).encode() + b"\n")
    mine = f"{len(records)} items, sha256 {digest.hexdigest()[:16]}"
    if not data_sharded():
        return mine
    import torch.distributed as dist

    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return "; ".join(f"rank {rank}: {part}" for rank, part in enumerate(every))


def _image_source(args, trained: systems.base.Fitted):
    """A function of a ``RecordBatch`` -> ``(image features, records, unreadable)``: features
    from --store, or extracted now as at training (None for a system that reads no image);
    with --skip-bad, records whose image cannot be read are left out (and counted), else the
    first is an error naming its line."""
    system = systems.get(trained.system)
    if not system.image:
        return lambda batch: (None, batch.records, 0)
    if args.store:
        store = FeatureStore(args.store)

        def read(batch):
            features = store_features(store, batch.records)
            system.check_image(features)
            return features, batch.records, 0
        return read
    recipe = trained.extractor
    if recipe is None:
        raise ValueError(f"{args.command}: the checkpoint records no image extractor: pass "
                         "--store")
    extractor = extractor_from_config(recipe, _device(args))
    skip_bad = getattr(args, "skip_bad", False)

    def extract(batch):
        try:
            features, bad = extractor.extract([r.image for r in batch.records], False, skip_bad)
        except BadImageError as error:
            raise ValueError(f"{batch.where(error.index)}: {error}"
                             + (" (--skip-bad passes over such records)"
                                if hasattr(args, "skip_bad") else "")) from None
        unreadable = set(bad)
        return (features, [r for i, r in enumerate(batch.records) if i not in unreadable],
                len(bad))
    return extract


def _ahead(items, work, threads: int, depth: int = 2):
    """``(item, work(item))`` of each of ``items``, in order. With ``threads`` > 1, ``work``
    runs on a thread of its own, up to ``depth`` items behind the caller's thread, which makes
    the items and handles the results meanwhile: torch ops (on one thread fewer, so the two
    never wait on each other for a core) overlap parsing and writing, Python's work. Chained,
    ``_ahead(_ahead(items, first, n), second, n)``, each stage has its thread (the C++ of
    both mostly runs without the GIL). An error comes out where it would without the thread:
    after the results of the items before it."""
    if threads == 1:
        for item in items:
            yield item, work(item)
        return
    pending = collections.deque()
    switch, torch_threads = sys.getswitchinterval(), torch.get_num_threads()
    torch.set_num_threads(threads - 1)
    sys.setswitchinterval(1e-4)  # a torch op's return waits at most this for the GIL
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="mmfast-classify") as pool:
            try:
                items, error = iter(items), None
                while True:
                    try:
                        item = next(items)
                    except StopIteration:
                        break
                    except Exception as raised:  # the items' error, after the results before it
                        error = raised
                        break
                    pending.append((item, pool.submit(work, item)))
                    if len(pending) > depth:
                        item, done = pending.popleft()
                        yield item, done.result()
                while pending:
                    item, done = pending.popleft()
                    yield item, done.result()
                if error is not None:
                    raise error
            finally:
                for _, done in pending:
                    done.cancel()
    finally:
        sys.setswitchinterval(switch)
        torch.set_num_threads(torch_threads)


@contextlib.contextmanager
def _fewer_collections():
    """Python's cyclic garbage collector left off the objects alive now (the model, torch's
    modules) and run 100x less often while a stream of batches makes and drops short-lived
    records: at the default thresholds it took a third of classify's time."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], 70_000), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


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
    trained = systems.load(args.checkpoint).to(_device(args))
    names = trained.labels
    label_json = [predictions.json_string(label) for label in names]
    images = _image_source(args, trained)
    thresholds = _thresholds(args, trained.labels)
    k = min(args.top_k, len(trained.labels))
    launched = sharding.torchrun_shard()  # under torchrun: this rank's share, merged by rank 0
    shard = args.shard or launched
    manifest = Manifest(args.input, skip_bad=args.skip_bad, columns=args.columns, shard=shard)
    output = Path(args.output) if shard is None else sharding.part_path(args.output, shard)
    as_csv = Path(args.output).suffix.lower() == ".csv"
    done_lines, done_ids = _resumable(output, as_csv) if args.resume else ([], [])
    resume_left = set(done_ids)
    count, unreadable, start = len(done_lines), 0, time.perf_counter()
    # images extracted now run the backbone on the caller's thread: it keeps every thread
    threads = 1 if systems.get(trained.system).image and not args.store else \
        torch.get_num_threads()

    def inputs():  # (records, image features) of each batch, bar and counts updated
        nonlocal unreadable
        for batch in manifest.batches(args.batch_size):
            if resume_left:  # items the interrupted run wrote: their rows are copied above
                todo = [i for i, record in enumerate(batch.records)
                        if record.id not in resume_left]
                resume_left.difference_update(record.id for record in batch.records)
                bar.update(len(batch) - len(todo))
                batch = batch.subset(todo)
                if not batch:
                    continue
            features, records, bad = images(batch)
            unreadable += bad
            bar.update(bad)
            if records:
                yield records, features

    def prepare(batch):  # (records, image features) -> what the network reads
        return trained.prepare(*batch)

    def score(prepared):
        return trained.probabilities_of(prepared[1])

    with atomic_path(output) as temporary, open(temporary, "w", newline="",
                                                encoding="utf-8") as out, \
            tqdm(desc="classify", unit="item", disable=args.quiet, leave=False) as bar, \
            _fewer_collections():
        writer = csv.writer(out) if as_csv else None
        if writer:
            writer.writerow(["id", "labels", "scores"])
        out.writelines(done_lines)
        # three stages a batch apart: reading and writing here, the inputs' preparation
        # (hashing) on one thread and the network on another, each a torch thread
        for ((records, _), _), scores in _ahead(_ahead(inputs(), prepare, threads), score,
                                                threads):
            rows = predictions.rows([record.id for record in records], scores, k, thresholds,
                                    names, label_json, as_csv)
            if writer:
                writer.writerows(rows)
            else:
                out.write(rows)
            count += len(records)
            bar.update(len(records))
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
    if launched and args.shard is None:
        _merge_ranks(args.output, launched)
    return 0


def _merge_ranks(output: str, shard: tuple[int, int], join=sharding.merge) -> None:
    """Under torchrun: once every rank has written its part, rank 0 joins them into ``output``
    (``join``: a predictions file's parts, or ``sharding.merge_stores``). The ranks wait for
    each other over a gloo process group (CPU, whatever the devices)."""
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo")
    try:
        dist.barrier()
        if shard[0] == 0:
            rows = join(output)
            print(f"merged the {shard[1]} ranks' parts: {rows} rows -> {output}")
        dist.barrier()  # no rank reports done before the output is
    finally:
        if started:
            dist.destroy_process_group()


def _merge(args) -> int:
    if args.store:
        rows = sharding.merge_stores(args.store, remove=not args.keep_parts)
        print(f"merged {rows} items -> {args.store}")
    else:
        rows = sharding.merge(args.output, remove=not args.keep_parts)
        print(f"merged {rows} rows -> {args.output}")
    return 0


def _eval(args) -> int:
    trained = systems.load(args.checkpoint).to(_device(args))
    everything = next(Manifest(args.input, columns=args.columns).batches(sys.maxsize), None)
    if everything is None:
        raise ValueError(f"--input {args.input}: expected items to evaluate, got none")
    features, records, _ = _image_source(args, trained)(everything)
    logits, targets = trained.logits(records, features), trained.targets(records)
    report = metrics.classification_report(logits, targets, trained.multilabel)
    if args.confusion and trained.multilabel:
        raise ValueError("--confusion: a confusion matrix needs a single-label model, got "
                         "a multi-label one (see --per-class)")
    if args.plot:  # first: it refuses a path whose format it cannot write before writing
        plot_report(args.plot, report, trained.labels)
    if args.confusion:
        known = targets != metrics.UNKNOWN_TARGET
        write_confusion_csv(args.confusion, metrics.confusion_matrix(
            logits.argmax(1)[known], targets[known], len(trained.labels)),
            trained.labels)
    if args.json:
        if not args.per_class:
            report.pop("per_class")
        print(json.dumps(report))
    else:
        print(format_report(report, trained.labels, per_class=args.per_class))
    return 0


def _models(args) -> int:
    images = {None: [], systems.POOLED: ["image"], systems.REGIONS: ["regions"]}
    rows = [{"system": system.name, "paper": system.paper, "tasks": list(system.tasks),
             "reads": " + ".join(images[system.image] + (["text"] if system.text else [])),
             "text": system.text, "summary": system.summary,
             "recipe": asdict(system.default_recipe()),
             "multilabel_recipe": asdict(system.default_recipe(True))}
            for system in systems.SYSTEMS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'system':<19} {'paper':<17} {'tasks':<26} {'reads':<15} {'defaults':<26} summary")
    for row in rows:
        recipe = row["recipe"]
        defaults = f"dim {recipe['dim']}, " if "dim" in recipe else ""
        defaults += f"{recipe['epochs']} epochs, lr {recipe['lr']:g}"
        print(f"{row['system']:<19} {row['paper']:<17} {', '.join(row['tasks']):<26} "
              f"{row['reads']:<15} {defaults:<26} {row['summary']}")
    print("mmfast train --help lists every default; mmfast models --json the whole recipes. "
          "mmfast train --model SYSTEM trains one (validating, keeping its best epoch); its "
          "checkpoint classifies and evaluates (mmfast classify|eval). Images are read from a "
          "feature store: pooled vectors (mmfast features) or regions (--regions grid)")
    return 0


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


def _manifest(args) -> int:
    records, train, heldout = write_image_folder_manifest(
        args.image_folder, args.out, args.heldout, args.heldout_fraction, args.seed)
    written = args.out if args.heldout is None else (
        f"{args.out} ({train}) and {args.heldout} ({heldout})")
    skipped = f"; {records.skipped} dangling symlinks skipped" if records.skipped else ""
    print(f"{len(records)} records of {len(records.classes)} classes written to {written}{skipped}")
    return 0
