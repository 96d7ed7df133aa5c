"""fastText-style training: SGD with the learning rate decaying linearly to 0 over the run."""

from dataclasses import dataclass

import torch
from torch import nn

from mmfast import _backend, metrics
from mmfast.defaults import OPTIMIZERS
from mmfast.devices import model_device
from mmfast.nn.fasttext import FastText
from mmfast.nn.kiela import DiscretizedFastText
from mmfast.ops.fasttext_sgd import fasttext_sgd_
from mmfast.train.distributed import (average_hook, data_sharded, epoch_batches, gather_rows,
                                      global_mean, global_sum, process_group, rows_weight,
                                      share_sizes, shuffled_share, steps_per_epoch)
from mmfast.train.resume import Resumable, Stage
from mmfast.train.selection import TRAIN_SAMPLE, select_epochs, valid_tie

LOSSES = ("softmax", "ova")


@dataclass
class Examples:
    """Encoded items: text bags as CSR (``words`` end to end, ``offsets`` per item), ``image``
    [N, D] float vectors or [N, T] int64 tokens (or None), ``targets`` [N] class indices
    (softmax) or [N, K] 0/1 floats (one-vs-all)."""

    words: torch.Tensor
    offsets: torch.Tensor
    image: torch.Tensor | None
    targets: torch.Tensor | None = None

    def __post_init__(self):
        end = self.offsets.new_tensor([self.words.numel()])
        self.lengths = torch.diff(self.offsets, append=end)
        for name in ("image", "targets"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != len(self):
                raise ValueError(f"Examples: {name} must have {len(self)} rows (one per text), "
                                 f"got shape {tuple(value.shape)}")

    def __len__(self) -> int:
        return self.offsets.numel()

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(words, offsets, image, targets)`` of the items ``index``, gathered without a
        Python loop."""
        lengths = self.lengths[index]
        offsets = torch.cumsum(lengths, 0) - lengths
        shift = torch.repeat_interleave(self.offsets[index] - offsets, lengths)
        words = self.words[shift + torch.arange(int(lengths.sum()))]
        image = None if self.image is None else self.image[index]
        targets = None if self.targets is None else self.targets[index]
        return words, offsets, image, targets

    def subset(self, index: torch.Tensor) -> "Examples":
        """The items ``index`` as their own ``Examples``."""
        return Examples(*self.batch(index))

    def slices(self, size: int | list[int], device: torch.device | None = None):
        """``(words, offsets, image, targets)`` of consecutive runs of ``size`` items (or of
        each of the sizes ``size`` lists): views, no gather (``batch`` of a shuffled ``subset``
        costs a gather per run), copied to ``device`` when given (the examples stay in host
        memory; a run at a time goes to the model's GPU)."""
        ends = torch.cat([self.offsets, self.offsets.new_tensor([self.words.numel()])]).tolist()
        sizes = size if isinstance(size, list) else [size] * -(-len(self) // size)
        begin = 0
        for size in sizes:
            end = min(begin + size, len(self))
            run = (self.words[ends[begin]:ends[end]], self.offsets[begin:end] - ends[begin],
                   None if self.image is None else self.image[begin:end],
                   None if self.targets is None else self.targets[begin:end])
            yield run if device is None else tuple(
                None if tensor is None else tensor.to(device, non_blocking=True)
                for tensor in run)
            begin = end


def loss_function(loss: str):
    """The training loss of ``loss``: a mean over the batch of each example's loss. One-vs-all
    sums its K binary losses per example, as fastText's ``-loss ova`` does: averaged over the
    labels instead, each label's gradient would be K times smaller and a multi-label model
    would not move from the label prior at fastText's learning rates."""
    if loss == "softmax":
        return nn.functional.cross_entropy
    if loss == "ova":
        return _one_vs_all
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def _one_vs_all(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    summed = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    return summed / max(logits.shape[0], 1)


def score(logits: torch.Tensor, targets: torch.Tensor, loss: str) -> float:
    """The model-selection score of ``logits`` against ``targets`` (higher is better), as
    ``mmfast.metrics.classification_report`` computes it: accuracy for softmax, an item whose
    target is -100 (a label the model never saw) counting as a miss; for one-vs-all, mean
    average precision over the labels with a positive (0 when none has one)."""
    if len(targets) == 0:
        return 0.0
    report = metrics.classification_report(logits, targets, loss == "ova", ks=(1,))
    return report[SCORE_NAMES[loss]] or 0.0


SCORE_NAMES = {"softmax": "accuracy", "ova": "mAP"}


def train(model: nn.Module, examples: Examples, *, epochs: int = 10, lr: float = 0.5,
          batch_size: int = 32, loss: str = "softmax", seed: int = 0,
          valid: Examples | None = None, patience: int | None = None,
          weight_decay: float = 0.0, text_lr_scale: float = 1.0, optimizer: str = "sgd",
          progress: bool = False, desc: str | None = None, average_every: int | None = None,
          checkpoints: Stage | None = None, stop_epoch: int | None = None) -> dict:
    """Train ``model`` in place; returns the run's figures: ``seconds`` (training alone),
    ``items_per_s``, ``final_loss``, ``history`` (per epoch: ``epoch``, ``loss`` and the
    selection score, ``accuracy`` or ``mAP``, on a fixed sample of the training set and, with
    ``valid``, on it), and with ``valid`` also ``best_epoch`` and ``valid_score``.

    The learning rate falls linearly from ``lr`` to 0 over all steps (fastText's schedule).
    On the fused backend, a float32 CPU ``FastText`` or ``DiscretizedFastText`` trains as
    fastText does (softmax, or one-vs-all as ``-loss ova``), one SGD step per example with
    ``torch.get_num_threads()`` Hogwild threads (``mmfast.ops.fasttext_sgd_``; ``batch_size``
    does not apply), or one thread when an epoch is shorter than ``HOGWILD_MIN_EXAMPLES``
    (or under ``torch.use_deterministic_algorithms(True)``): the same model on every run.
    Otherwise (the reference backend, other models, losses or devices) minibatches of
    ``batch_size`` take autograd steps, embedding tables with sparse gradients getting sparse
    updates at ``text_lr_scale`` times ``lr``, and the dense parameters (image projection,
    classifier, bilinear form) an L2 penalty ``weight_decay`` (the fused path, like fastText,
    has none and one rate).
    ``optimizer`` "sgd" steps with SGD; "adam" with AdamW (decoupled ``weight_decay``) on the
    dense parameters and SparseAdam on the sparse tables (the fused path is SGD whatever it
    says). In a process group of several ranks the fused path trains as local SGD, the ranks
    merging their updates every ``average_every`` examples of a rank's share
    (``_fused_epochs``).

    With ``valid``, the model is scored on it after every epoch and ends with the weights of
    its best epoch (the last of equal scores); ``patience`` epochs without a better score stop
    the run early (None: run all ``epochs``). An epoch that leaves a non-finite loss or weight
    (``lr`` too high) ends the run at the best epoch before it (``diverged_epoch`` in the
    figures), or, with no such epoch, raises ValueError.

    ``checkpoints`` (``mmfast.train.resume``): where the run saves its state every few epochs
    and, resuming, goes on from the newest saved. ``stop_epoch``: the last epoch to train, the
    learning-rate schedule still planned over ``epochs`` (a refit's).
    """
    if examples.targets is None or (valid is not None and valid.targets is None):
        raise ValueError("train: examples (and valid) must have targets")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"train: epochs and batch_size must be >= 1 and lr > 0, got "
                         f"epochs={epochs}, batch_size={batch_size}, lr={lr}")
    if not weight_decay >= 0:
        raise ValueError(f"train: weight_decay must be >= 0, got {weight_decay}")
    if not 0 < text_lr_scale < float("inf"):
        raise ValueError(f"train: text_lr_scale must be a finite number > 0, got "
                         f"{text_lr_scale}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"train: optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    criterion = loss_function(loss)
    generator = torch.Generator().manual_seed(seed)
    if _fused_sgd_applies(model, loss):
        optimizers, schedules = [], []

        def epoch_losses(done: int):
            return _fused_epochs(model, examples, done, epochs, lr, generator, average_every)
    else:
        optimizers, schedules = _optimizers(model, optimizer, lr, weight_decay, text_lr_scale,
                                            epochs * steps_per_epoch(len(examples), batch_size,
                                                         process_group()[1]))

        def epoch_losses(done: int):
            return _minibatch_epochs(model, examples, batch_size, criterion, optimizers,
                                     schedules, generator)
    sample = examples.subset(shuffled_share(len(examples), generator)[:TRAIN_SAMPLE])

    def scored(split: Examples) -> float:  # of the whole split: the ranks' shares gathered
        return score(gather_rows(predict(model, split)), gather_rows(split.targets), loss)

    return select_epochs(
        model, epoch_losses, epochs, SCORE_NAMES[loss], lambda: scored(sample),
        None if valid is None else lambda: scored(valid),
        patience, int(global_sum(torch.tensor(len(examples)))), lr, progress, desc,
        resumable=Resumable(checkpoints, model, optimizers, {"shuffle": generator}, schedules),
        tie=0.0 if valid is None else valid_tie(int(global_sum(torch.tensor(len(valid))))),
        stop_epoch=stop_epoch)


def _optimizers(model, optimizer, lr, weight_decay, text_lr_scale, total_steps):
    """The minibatch trainer's optimizers and their schedules (lr falling linearly to 0 over
    ``total_steps``), the sparse tables' at ``text_lr_scale`` times the others'."""
    # Weight decay is dense: the sparse-gradient embedding tables go without it.
    sparse = [module.weight for module in model.modules()
              if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse]
    dense = [p for p in model.parameters() if all(p is not s for s in sparse)]
    if optimizer == "sgd":
        optimizers = [torch.optim.SGD([
            {"params": sparse, "weight_decay": 0.0, "lr": lr * text_lr_scale},
            {"params": dense, "weight_decay": weight_decay}], lr=lr)]
    else:
        optimizers = [torch.optim.AdamW(dense, lr=lr, weight_decay=weight_decay)]
        if sparse:
            optimizers.append(torch.optim.SparseAdam(sparse, lr=lr * text_lr_scale))
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1 - step / total_steps)
                 for o in optimizers]
    return optimizers, schedules


def _minibatch_epochs(model, examples, batch_size, criterion, optimizers, schedules,
                      generator):
    """Autograd steps by minibatches with ``optimizers``; yields each epoch's mean loss.

    In a process group of several ranks (torchrun) the model trains under
    ``DistributedDataParallel`` (gloo on the CPU) on this rank's rows of each step
    (``distributed.epoch_batches``: its part of every batch of the one shuffle, or steps on its
    own share), and the gradients are averaged over the ranks, each weighted by its rows
    (``rows_weight``): with every rank holding every item, the steps are a single process's on
    the whole batches (up to float rounding)."""
    rank, world = process_group()
    forward, device = model, model_device(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model)
        forward.register_comm_hook(None, average_hook)
    while True:  # select_epochs takes as many epochs as it runs
        model.train()
        total = torch.zeros((), device=device)
        batches = epoch_batches(len(examples), batch_size, generator, (rank, world))
        order, sizes = torch.cat(batches), [len(batch) for batch in batches]
        for words, offsets, image, targets in examples.subset(order).slices(sizes, device):
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            value = criterion(forward(words, offsets, image), targets)
            (value * rows_weight(len(targets), world)).backward()
            for o, schedule in zip(optimizers, schedules):
                o.step()
                schedule.step()
            total += value.detach() * len(targets)
        yield global_mean(float(total), len(order), world)


def _fused_sgd_applies(model: nn.Module, loss: str) -> bool:
    # Exact types: subclasses such as ContinuousFusion have more than the one embedding bag.
    return (not _backend.use_reference()
            and type(model) in (FastText, DiscretizedFastText)
            and model.embedding.weight.device.type == "cpu"
            and model.embedding.weight.dtype == torch.float32)


# Hogwild threads train an epoch of at least this many examples (a rank's share). A shorter one
# trains on one thread, in tens of milliseconds, and comes out the same on every run: Hogwild's
# races made each run's model differ (the demo's rspq model held out 0.728 in one run and 0.661
# in the next, the epoch kept 30 and 1).
HOGWILD_MIN_EXAMPLES = 65_536


def _fused_epochs(model: FastText, examples: Examples, done: int, epochs: int, lr: float,
                  generator: torch.Generator, average_every: int | None = None):
    """One ``fasttext_sgd_`` call per epoch after the ``done`` ones, over a fresh shuffle (an
    ``order``: the bags are built once and never gathered), each taking its share of the run's
    linear decay; yields each epoch's mean loss.

    In a process group of several ranks (``torch.distributed``, e.g. under torchrun) each rank
    trains on every world-size-th example of the shuffle (the same shuffle everywhere: one
    seed), or on a shuffle of its own share when it holds only that (``sharded_data``), with
    its own Hogwild threads, and every ``average_every`` examples of a rank's share (None:
    ``MERGES_PER_EPOCH`` times an epoch) the ranks merge their updates (``_merge_updates``, an
    ``all_reduce``): every rank holds the same model after each epoch."""
    targets = examples.targets
    # softmax: items without a known label (-100) take no step, as cross_entropy ignores them
    kept = (targets >= 0).nonzero().flatten() if targets.dim() == 1 else torch.arange(len(targets))
    if targets.dim() == 1:
        targets = targets.clamp(min=0)  # the kernel checks every label; `order` skips these
    parameters = (model.embedding.weight.detach(), model.classifier.weight.detach(),
                  model.classifier.bias.detach())
    with torch.no_grad():
        ids, starts, weights = model.bags(examples.words, examples.offsets, examples.image)
    bounds = torch.cat([starts, starts.new_tensor([ids.numel()])])  # [B + 1]
    rank, world = process_group()
    anchors = [p.clone() for p in parameters] if world > 1 else None
    # the ranks' shares of an epoch differ by one at most (of a sharded split, by more): all
    # take as many steps between merges, the longest share's
    share = max(share_sizes(len(kept))) if data_sharded() else -(-len(kept) // world)
    threads = None if share >= HOGWILD_MIN_EXAMPLES else 1
    for epoch in range(done, epochs):
        model.train()
        order = kept[shuffled_share(len(kept), generator)]
        if not data_sharded():  # every rank holds every item: its share of the shuffle
            order = order[rank::world]
        chunk = (share if world == 1 else average_every if average_every
                 else -(-share // MERGES_PER_EPOCH))
        steps, total = -(-share // chunk) if share else 1, 0.0
        for step in range(steps):
            begin, end = lr * (1 - (epoch + step / steps) / epochs), \
                lr * (1 - (epoch + (step + 1) / steps) / epochs)
            part = order[step * chunk:(step + 1) * chunk]
            with torch.no_grad():
                losses = fasttext_sgd_(*parameters, ids, bounds, weights, targets, begin, end,
                                       threads=threads, order=part)
                total += float(losses.sum())
                if world > 1:
                    _merge_updates(parameters, anchors, _rows_of(ids, bounds, part))
        yield global_mean(total, len(order), world)


# Merges of the ranks' updates per epoch by default: on the demo's subgroup task (1362 items, two
# ranks) held-out accuracy was 0.384 merging once an epoch, 0.414 every 100 examples of a rank
# (~7 an epoch) and 0.433 every 10, against one process's 0.411; each merge moves the whole
# embedding table, so the count per epoch, not per example, bounds the traffic on large data.
MERGES_PER_EPOCH = 8


def _merge_updates(parameters, anchors, rows: torch.Tensor) -> None:
    """Every rank's ``parameters`` set, in place, to ``anchors`` (the parameters at the last
    merge) plus the sum of every rank's change since: each example's step counts once, as a
    Hogwild thread's does. (Their mean instead halves every step with two ranks: held-out
    subgroup accuracy 0.366 against the sum's 0.414 and one process's 0.411.) Of the embedding
    table (the first parameter) only the ``rows`` this rank's steps touched, joined with the
    other ranks', change and travel: a few percent of a table of 2M n-gram buckets."""
    import torch.distributed as dist

    rows = _all_rows(rows)
    table, anchor = parameters[0], anchors[0]
    change = table[rows] - anchor[rows]
    dist.all_reduce(change, op=dist.ReduceOp.SUM)
    table[rows] = anchor[rows] + change
    anchor[rows] = table[rows]
    for parameter, anchor in zip(parameters[1:], anchors[1:]):
        parameter -= anchor
        dist.all_reduce(parameter, op=dist.ReduceOp.SUM)
        parameter += anchor
        anchor.copy_(parameter)


def _rows_of(ids: torch.Tensor, bounds: torch.Tensor, examples: torch.Tensor) -> torch.Tensor:
    """The distinct embedding rows of the bags of ``examples`` (``ids[bounds[e]:bounds[e+1]]``)."""
    starts, lengths = bounds[examples], bounds[examples + 1] - bounds[examples]
    within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths)
    return ids[torch.repeat_interleave(starts, lengths) + within].unique()


def _all_rows(rows: torch.Tensor) -> torch.Tensor:
    """The union of every rank's ``rows``, the same on every rank."""
    import torch.distributed as dist

    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(rows)]))
    padded = torch.full((int(max(sizes)),), -1, dtype=torch.long)
    padded[:len(rows)] = rows
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    joined = torch.cat(gathered)
    return joined[joined >= 0].unique()


@torch.no_grad()
def predict(model: nn.Module, examples: Examples, batch_size: int = 8192) -> torch.Tensor:
    """Logits [N, K] in the order of ``examples``, on the CPU (the model runs on its device),
    ``batch_size`` items a forward pass. The default is classify's batch, so each of its
    batches is one pass: cut into runs of 1024, the PQ model classified 5% fewer items a
    second (bench_classify, 349-364k -> 382-395k items/s)."""
    model.eval()
    outputs = []
    for words, offsets, image, _ in examples.slices(batch_size, model_device(model)):
        outputs.append(model(words, offsets, image))
    return torch.cat(outputs).cpu() if outputs else torch.empty(0, model.num_classes)
