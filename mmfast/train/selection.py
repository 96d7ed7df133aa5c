"""Model selection over epochs, shared by every supervised trainer of ``mmfast train``: score
each epoch on a training sample and on the validation split, keep the best epoch's weights,
stop early after ``patience`` epochs without progress, and stop at divergence."""

import math
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from mmfast.train.resume import Resumable

# Items a trainer scores after each epoch to report its training metric: the whole set would
# cost a pass per epoch.
TRAIN_SAMPLE = 2048
_BEST = "best."  # the saved state's names of the best epoch's weights


def select_epochs(model: nn.Module, epoch_losses: Callable[[int], Iterator[float]], epochs: int,
                  metric: str, train_score: Callable[[], float],
                  valid_score: Callable[[], float] | None, patience: int | None, items: int,
                  lr: float, progress: bool = False, desc: str | None = None, *,
                  resumable: Resumable, tie: float = 0.0, stop_epoch: int | None = None) -> dict:
    """Run ``epoch_losses(start)`` (a generator that trains ``model`` one epoch per ``next``
    from epoch ``start`` + 1 and yields the epoch's mean loss) up to epoch ``epochs`` at most,
    or ``stop_epoch`` (the trainer's schedule still planned over ``epochs``: a refit stops
    where validation kept the selection run); after each, ``train_score()`` and
    ``valid_score()`` score the model by ``metric`` (higher is better). Returns the run's
    figures: ``seconds`` (training alone, not scoring), ``items_per_s`` (``items`` per epoch),
    ``final_loss``, ``history`` (per epoch: ``epoch``, ``loss``, ``train_<metric>`` and
    ``valid_<metric>``), ``metric``, and with ``valid_score`` also ``best_epoch`` and
    ``valid_score``.

    With ``valid_score``, the model ends with the weights of its best epoch: the last whose
    score is within ``tie`` of the best (``valid_tie``: one validation item's worth);
    ``patience`` epochs without a better score stop the run (None: run all ``epochs``). An
    epoch that leaves a non-finite loss or weight (``lr`` too high) ends the run at the best
    epoch before it (``diverged_epoch`` in the figures), or, with no such epoch, raises
    ValueError.

    ``resumable`` (``mmfast.train.resume``; one without a stage saves nothing): the trainer's
    state saved after the epochs its stage asks for, with this selection's (history, best epoch
    and its weights, epochs without progress), and, when resuming, restored first: the run goes
    on after the saved epoch.
    """
    if patience is not None and patience < 1:
        raise ValueError(f"train: patience must be >= 1 or None, got {patience}")
    if stop_epoch is not None and not 1 <= stop_epoch <= epochs:
        raise ValueError(f"train: stop_epoch must be in [1, epochs={epochs}] or None, got "
                         f"{stop_epoch}")
    last = epochs if stop_epoch is None else stop_epoch
    history, best, best_state, seconds, stale, diverged = [], None, None, 0.0, 0, None
    restored = resumable.restore()
    done = 0
    if restored is not None:
        config, tensors = restored
        done, selection = config["epoch"], config["selection"]
        history, best = selection["history"], selection["best"]
        seconds, stale = selection["seconds"], selection["stale"]
        best_state = {name[len(_BEST):]: value for name, value in tensors.items()
                      if name.startswith(_BEST)} if best is not None else None
    top = max((row[f"valid_{metric}"] for row in history if f"valid_{metric}" in row),
              default=-math.inf)  # the best validation score so far
    stopped = patience is not None and stale >= patience
    epoch_losses = epoch_losses(done)
    # the bar counts items (epochs x items), as classify's does, and names what trains
    with tqdm(total=(last - done) * items, desc=desc or f"train {type(model).__name__}",
              unit="item", unit_scale=True, disable=not progress, leave=False) as bar:
        for epoch in range(done + 1, (done if stopped else last) + 1):
            start = time.perf_counter()
            epoch_loss = next(epoch_losses)
            seconds += time.perf_counter() - start
            if not (math.isfinite(epoch_loss) and _finite(model)):
                if best is None:
                    raise ValueError(f"train: diverged at epoch {epoch} (loss {epoch_loss:.4g}, "
                                     f"non-finite weights): lr {lr} is too high for this model "
                                     "and data, lower it")
                diverged = epoch  # the best epoch before it is kept
                break
            model.eval()
            row = {"epoch": epoch, "loss": epoch_loss, f"train_{metric}": train_score()}
            if valid_score is not None:
                value = row[f"valid_{metric}"] = valid_score()
                stale = 0 if value > top else stale + 1
                top = max(top, value)
                # A tie goes to the later epoch, trained longer at a lower learning rate: on a
                # small validation set the score plateaus, and the first epoch to reach it was
                # the noisiest (emoji group additive: epoch 4 kept, held-out 0.742; epoch 18,
                # same validation score, 0.763). A score one item below the best is a tie too:
                # on the demo's group task (127 items) the pq and rspq models kept epochs 1-4
                # of 30 at two seeds of three and held out 0.721 and 0.725 (seeds 0-2); with
                # the one-item tie, 0.748 and 0.749.
                if value >= top - tie:
                    best = row
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history.append(row)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()})
            bar.update(items)
            stopped = patience is not None and stale >= patience
            resumable.save(epoch, stopped or epoch == last, selection={
                "history": history, "best": best, "seconds": seconds, "stale": stale},
                tensors=None if best_state is None else {
                    _BEST + name: value for name, value in best_state.items()})
            if stopped:
                break
    epoch_losses.close()
    model.train(False)
    stats = {"seconds": seconds, "items_per_s": len(history) * items / max(seconds, 1e-9),
             "final_loss": history[-1]["loss"], "history": history, "metric": metric}
    if diverged is not None:
        stats["diverged_epoch"] = diverged
    if best is not None:
        model.load_state_dict(best_state)
        stats.update(best_epoch=best["epoch"], valid_score=best[f"valid_{metric}"])
    return stats


def valid_tie(items: int) -> float:
    """The ``tie`` of ``select_epochs`` for a validation split of ``items`` (every rank's): one
    item's share of its accuracy, far below the noise of a split small enough to need it, and a
    hair over, so that a score one item below the best stays a tie after float rounding."""
    return (1 + 1e-6) / max(items, 1)


def _finite(model: nn.Module) -> bool:
    """Whether every parameter is finite: its least and greatest entries are (NaN carries
    through both). One vectorized read of each parameter; ``isfinite(p).all()`` wrote a bool
    copy of it first and took a sixth of a fastText run on a 2M-row embedding table."""
    return all(bool(torch.isfinite(torch.stack(torch.aminmax(p.detach()))).all())
               for p in model.parameters() if p.numel())
