"""Unsupervised training of paper 002's autoencoders (DESIGN 3.3) on their weighted
reconstruction loss: shuffled mini-batches, one optimizer step each (the paper uses SGD; any
``torch.optim`` optimizer works), resumable checkpoints."""

import math
import os

import torch
from tqdm.auto import tqdm

from mmfast.nn.autoencoder import CrossModalAutoencoder, JointAutoencoder, _check_positive_int
from mmfast.train import checkpoint
from mmfast.train.distributed import (average_gradients, epoch_batches, process_group,
                                      steps_per_epoch)

LOSS_PARTS = ("loss", "visual", "text", "decay")


class AutoencoderTrainer:
    """Trains a ``JointAutoencoder`` or ``CrossModalAutoencoder`` with ``optimizer`` (built over
    ``model.parameters()``). ``epoch`` counts the epochs completed, ``history`` holds one
    summary per epoch (see ``fit``)."""

    def __init__(self, model: JointAutoencoder | CrossModalAutoencoder,
                 optimizer: torch.optim.Optimizer, distributed: bool = False):
        if not isinstance(model, (JointAutoencoder, CrossModalAutoencoder)):
            raise TypeError(f"AutoencoderTrainer: model must be a JointAutoencoder or a "
                            f"CrossModalAutoencoder, got {type(model).__name__}")
        self.model, self.optimizer = model, optimizer
        self.epoch, self.history, self.seed = 0, [], None
        # in a process group (torchrun): each rank steps on its part of every batch, the
        # gradients averaged over the ranks (mmfast.train.distributed)
        self.rank, self.world = process_group() if distributed else (0, 1)

    def step(self, v: torch.Tensor, tau: torch.Tensor | None = None,
             text_present: torch.Tensor | None = None) -> dict[str, float]:
        """One optimizer step on one mini-batch (arguments as ``model.loss``); returns the loss
        before the step and its parts: ``loss`` = ``visual`` + ``text`` + ``decay``."""
        self.model.train()
        return self._step(self.model.loss(v, tau, text_present), len(v))

    def _step(self, parts, rows: int) -> dict[str, float]:
        """The optimizer step on ``parts``, the model's ``AutoencoderLoss`` on one batch of
        ``rows`` rows."""
        values = dict(zip(LOSS_PARTS, (float(part.detach()) for part in parts)))
        if not math.isfinite(values["loss"]):
            # Stop before the step writes NaN into every weight.
            raise FloatingPointError(f"AutoencoderTrainer.step: the loss is {values['loss']} "
                                     f"({values}); lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        average_gradients(self.model.parameters(), self.world, rows)
        self.optimizer.step()
        return values

    def fit(self, v: torch.Tensor, tau: torch.Tensor | None, epochs: int, batch_size: int = 32,
            seed: int = 0, *, text_present: torch.Tensor | None = None, progress: bool = True,
            checkpoint_dir: str | os.PathLike | None = None, desc: str | None = None
            ) -> list[dict]:
        """Trains from epoch ``self.epoch`` (0, or where ``load_checkpoint`` stopped) up to
        ``epochs`` on the rows of ``v`` [N, visual_dim] and ``tau`` [N, text_dim] (and
        ``text_present`` [N], as in ``model.loss``), in mini-batches of ``batch_size`` rows
        shuffled each epoch by a generator seeded with ``seed``: the same seed gives the same
        batches, on a resumed run too (a resumed run must use the checkpoint's seed). The model's
        initial weights are the caller's (seed torch before building it). Checkpoints into
        ``checkpoint_dir`` after every epoch; the progress bar is ``desc`` (default: the model's
        class). Returns ``history``: per epoch, ``epoch`` and the
        mean over its rows of each loss part."""
        fn = "AutoencoderTrainer.fit"
        _check_positive_int(fn, "epochs", epochs)
        _check_positive_int(fn, "batch_size", batch_size)
        if self.epoch > 0 and self.seed is not None and seed != self.seed:
            raise ValueError(f"{fn}: seed must be {self.seed}, the seed of the run being "
                             f"resumed at epoch {self.epoch}, got {seed}")
        # checked once here: the batches are rows of checked tensors
        v, tau, text_present = self.model.check_loss_inputs(fn, v, tau, text_present)
        num_rows = v.shape[0]
        if num_rows == 0:
            raise ValueError(f"{fn}: v must have at least one row, got shape {tuple(v.shape)}")
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        total_steps = (steps_per_epoch(num_rows, batch_size, self.world)
                       * max(epochs - self.epoch, 0))
        name = type(self.model).__name__
        self.model.train()
        with tqdm(total=total_steps, disable=not progress, desc=desc or name,
                  unit="batch") as bar:
            for epoch in range(epochs):
                # Every epoch draws its order, done or not, so a resumed run sees the batches
                # an uninterrupted one would have.
                batches = epoch_batches(num_rows, batch_size, generator, (self.rank, self.world))
                if epoch < self.epoch:
                    continue
                sums = dict.fromkeys(LOSS_PARTS, 0.0)
                for rows in batches:
                    rows = rows.to(v.device)
                    result = self._step(self.model._loss(
                        v[rows], None if tau is None else tau[rows],
                        None if text_present is None else text_present[rows]), len(rows))
                    for part in LOSS_PARTS:
                        sums[part] += result[part] * len(rows)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{result['loss']:.4f}")
                stepped = sum(len(rows) for rows in batches)  # this rank's rows
                self.history.append({"epoch": epoch, **{part: value / stepped
                                                        for part, value in sums.items()}})
                self.epoch = epoch + 1
                if checkpoint_dir is not None:
                    self.save_checkpoint(checkpoint_dir)
        return self.history

    # ---- checkpoints: the model's (mmfast.train.load_checkpoint reads them) plus the trainer's
    def save_checkpoint(self, directory: str | os.PathLike) -> None:
        """The model, the optimizer's state and the trainer's (epoch, seed, history) in
        ``mmfast.train.checkpoint``'s layout; ``mmfast.train.load_checkpoint`` reads the model."""
        checkpoint.save_checkpoint(directory, self.model, {"trainer": self.state()},
                                   optimizer=self.optimizer)

    def load_checkpoint(self, directory: str | os.PathLike) -> None:
        """Restores the model's weights, the optimizer, epoch, seed and history from
        ``save_checkpoint``; ``fit`` then resumes where it stopped. Never unpickles."""
        config = checkpoint.resume(directory, self.model, self.optimizer, ("trainer",),
                                   "AutoencoderTrainer.load_checkpoint")
        self.load_state(config["trainer"])

    def state(self) -> dict:
        """What the trainer adds to a checkpoint beside the model and optimizer (JSON)."""
        return {"epoch": self.epoch, "seed": self.seed, "history": self.history}

    def load_state(self, state: dict) -> None:
        self.epoch, self.seed, self.history = state["epoch"], state["seed"], state["history"]
