"""CACNet's two-phase training (DESIGN 2.4): phase 1 trains the passive sub-networks; phase 2
compares the full network with them (beta) and trains either the full network (beta < gamma,
case 1) or the cross-active sub-networks (case 2). Each phase ends with an optimizer step."""

import numbers
import os
from collections.abc import Callable, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from mmfast import _backend
from mmfast import ops
from mmfast.nn.cacnet import CACNet
from mmfast.ops.cacnet import PARAM_NAMES
from mmfast.reference import cacnet as reference
from mmfast.train import checkpoint
from mmfast.train.distributed import (average_gradients, epoch_batches, global_mean,
                                      process_group, steps_per_epoch)


class GammaSchedule:
    """The paper's gamma: ``start`` until the last ``ramp_epochs`` epochs, then linear up to
    ``end`` at the final epoch (0.4 -> 0.8 over the last 100 of 500 epochs)."""

    def __init__(self, start: float = 0.4, end: float = 0.8, ramp_epochs: int = 100):
        self.start, self.end, self.ramp_epochs = float(start), float(end), int(ramp_epochs)

    def __call__(self, epoch: int, num_epochs: int | None) -> float:
        """gamma of ``epoch`` (0-based) of a ``num_epochs`` run; None: not known yet."""
        if num_epochs is None:
            return self.start
        ramp_begin = max(num_epochs - self.ramp_epochs, 0)
        if epoch < ramp_begin:
            return self.start
        fraction = (epoch - ramp_begin + 1) / (num_epochs - ramp_begin)
        return self.start + (self.end - self.start) * min(fraction, 1.0)

    def __repr__(self) -> str:
        return f"GammaSchedule(start={self.start}, end={self.end}, ramp_epochs={self.ramp_epochs})"


class ShuffledBatches:
    """``(x_img, x_txt, targets)`` mini-batches of ``batch_size`` rows, reshuffled each epoch by
    a generator seeded with ``seed``: what ``CACNetTrainer.fit`` iterates. Slicing whole
    tensors, unlike a ``DataLoader`` collating sample by sample, costs little next to a
    batch-20 step. ``part`` (rank, world): under torchrun, this rank's rows of each step
    (``distributed.epoch_batches``)."""

    def __init__(self, x_img: torch.Tensor, x_txt: torch.Tensor, targets: torch.Tensor,
                 batch_size: int, seed: int, part: tuple[int, int] = (0, 1)):
        self.tensors, self.batch_size = (x_img, x_txt, targets), batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.part = part

    def __len__(self) -> int:
        return steps_per_epoch(len(self.tensors[0]), self.batch_size, self.part[1])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for rows in epoch_batches(len(self.tensors[0]), self.batch_size, self.generator,
                                  self.part):
            rows = rows.to(self.tensors[0].device)
            yield tuple(tensor[rows] for tensor in self.tensors)


class CACNetTrainer:
    """Runs CACNet's two-phase iterations with ``optimizer`` (built over ``model.parameters()``).

    ``gamma_schedule``: a number (constant gamma; 1 disables case 2, the paper's ablation) or a
    callable ``(epoch, num_epochs) -> gamma`` (``num_epochs`` None before ``fit`` knows it).
    ``train_output_in_cross_active``: whether case 2 also trains w(g',y), w(g'',y), b_y.
    The fused ops or the literal reference run, following ``mmfast.get_backend()``.

    ``distributed``: in a process group (torchrun) each rank steps on its part of every batch
    (``ShuffledBatches(part=...)``) and the ranks stay one model: every phase's gradients are
    averaged over them, and beta is the whole batch's (the ranks sum their per-sample ratios
    (E'_i + E''_i) / 2E_i before it is taken), so every rank takes the same case.
    """

    def __init__(
        self,
        model: CACNet,
        optimizer: torch.optim.Optimizer,
        gamma_schedule: float | Callable[[int, int | None], float] = GammaSchedule(),
        train_output_in_cross_active: bool = True,
        distributed: bool = False,
    ):
        if not isinstance(model, CACNet):
            raise TypeError(f"CACNetTrainer: model must be a CACNet, got {type(model).__name__}")
        if isinstance(gamma_schedule, numbers.Real):
            constant = float(gamma_schedule)
            gamma_schedule = lambda epoch, num_epochs: constant  # noqa: E731
        elif not callable(gamma_schedule):
            raise TypeError("CACNetTrainer: gamma_schedule must be a number or a callable "
                            f"(epoch, num_epochs) -> gamma, got {type(gamma_schedule).__name__}")
        self.model, self.optimizer = model, optimizer
        self.gamma_schedule = gamma_schedule
        self.train_output_in_cross_active = train_output_in_cross_active
        self.gamma = float(gamma_schedule(0, None))
        self.epoch = 0  # epochs completed
        self.rank, self.world = process_group() if distributed else (0, 1)

    # ---- one iteration
    def step(self, x_img: torch.Tensor, x_txt: torch.Tensor, targets: torch.Tensor) -> dict:
        """Phase 1 then phase 2 on one mini-batch. Returns the mean losses (``phase1_loss``:
        E' + E'' before phase 1's update; ``loss``, ``passive_image_loss``,
        ``passive_text_loss``: E, E', E'' in phase 2; ``cross_active_loss`` in case 2, else
        None), ``beta``, ``gamma`` and ``case`` (1 or 2)."""
        model = self.model
        params = model.op_params()
        ops.cacnet._check_args("CACNetTrainer.step", x_img, x_txt, targets, params,
                               model.activation)
        if _backend.use_reference():
            # The fused kernels check the values in the pass that reads them (a second pass here
            # would cost 2-4% of a step); the literal path checks them before its first update.
            ops.cacnet._check_values("CACNetTrainer.step", x_img, x_txt, targets)
            return self._reference_step(x_img, x_txt, targets)
        activation = model.activation
        phase1 = ops.cacnet.cacnet_phase1(x_img, x_txt, targets, params, activation)
        self._optimizer_step(params, phase1.grads, len(targets))
        forward = ops.cacnet.cacnet_phase2_forward(x_img, x_txt, targets, params, activation)
        beta = self._beta(forward.beta, forward.full_loss, forward.passive_image_loss,
                          forward.passive_text_loss)
        cross_active_loss = None
        if beta < self.gamma:
            case = 1
            grads = ops.cacnet.cacnet_phase2_full_backward(
                x_img, x_txt, targets, params, forward, activation
            )
        else:
            case = 2
            cross = ops.cacnet.cacnet_phase2_cross_active(
                x_img, x_txt, targets, params, forward, activation,
                self.train_output_in_cross_active,
            )
            grads = cross.grads
            cross_active_loss = float(cross.image_loss.mean() + cross.text_loss.mean())
        self._optimizer_step(params, grads, len(targets))
        return {
            "phase1_loss": float(phase1.image_loss.mean() + phase1.text_loss.mean()),
            "loss": float(forward.full_loss.mean()),
            "passive_image_loss": float(forward.passive_image_loss.mean()),
            "passive_text_loss": float(forward.passive_text_loss.mean()),
            "cross_active_loss": cross_active_loss,
            "beta": beta, "gamma": self.gamma, "case": case,
        }

    def _optimizer_step(self, params, grads: dict, rows: int) -> None:
        # A parameter the phase does not train gets no gradient at all (not a zero one), so
        # optimizers with momentum or weight decay leave it alone, as autograd would.
        for name, param in zip(PARAM_NAMES, params):
            param.grad = grads.get(name)
        average_gradients([p for p in params if p.grad is not None], self.world, rows)
        self.optimizer.step()

    def _beta(self, beta, full_loss, passive_image_loss, passive_text_loss) -> float:
        """This batch's beta, the whole batch's across the ranks (see the class docstring)."""
        if self.world == 1:
            return float(beta)
        # reference.beta's alpha, its mean taken over every rank's samples
        ratios = (passive_image_loss + passive_text_loss) / (2 * full_loss.clamp(min=1e-12))
        alpha = global_mean(float(ratios.sum()), len(ratios), self.world)
        return alpha / (1 + alpha)

    def _reference_step(self, x_img, x_txt, targets) -> dict:
        """The literal iteration: separate sub-network passes and autograd."""
        model, optimizer, activation = self.model, self.optimizer, self.model.activation
        params = dict(zip(PARAM_NAMES, model.op_params()))

        optimizer.zero_grad(set_to_none=True)
        image_loss, text_loss = reference.pair_losses(
            "passive", x_img, x_txt, targets, params, activation
        )
        phase1_loss = image_loss.mean() + text_loss.mean()
        phase1_loss.backward()
        average_gradients([p for p in params.values() if p.grad is not None], self.world,
                          len(targets))
        optimizer.step()

        optimizer.zero_grad(set_to_none=True)
        full_loss = reference.per_sample_loss(
            reference.full_logits(x_img, x_txt, params, activation), targets
        )
        with torch.no_grad():
            passive_image, passive_text = reference.pair_losses(
                "passive", x_img, x_txt, targets, params, activation
            )
        beta = self._beta(reference.beta(full_loss.detach(), passive_image, passive_text),
                          full_loss.detach(), passive_image, passive_text)
        cross_active_loss = None
        if beta < self.gamma:
            case = 1
            full_loss.mean().backward()
        else:
            case = 2
            cross_image, cross_text = reference.pair_losses(
                "cross_active", x_img, x_txt, targets, params, activation,
                self.train_output_in_cross_active,
            )
            objective = cross_image.mean() + cross_text.mean()
            objective.backward()
            cross_active_loss = float(objective.detach())
        average_gradients([p for p in params.values() if p.grad is not None], self.world,
                          len(targets))
        optimizer.step()
        return {
            "phase1_loss": float(phase1_loss.detach()),
            "loss": float(full_loss.detach().mean()),
            "passive_image_loss": float(passive_image.mean()),
            "passive_text_loss": float(passive_text.mean()),
            "cross_active_loss": cross_active_loss,
            "beta": beta, "gamma": self.gamma, "case": case,
        }

    # ---- epochs
    def fit(
        self,
        batches: Iterable,
        num_epochs: int = 500,
        checkpoint_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> list[dict]:
        """Trains from epoch ``self.epoch`` (0, or where a loaded checkpoint stopped) to
        ``num_epochs``; ``batches`` yields (x_img, x_txt, targets) anew each epoch (a
        ``DataLoader``). Sets gamma per epoch from the schedule, checkpoints into
        ``checkpoint_dir`` after every epoch, and returns one summary per epoch: mean losses,
        mean beta, gamma and how many iterations took each case."""
        history = []
        total = None
        if hasattr(batches, "__len__"):
            total = len(batches) * max(num_epochs - self.epoch, 0)
        with tqdm(total=total, disable=not progress, desc="CACNet", unit="batch") as bar:
            for epoch in range(self.epoch, num_epochs):
                self.gamma = float(self.gamma_schedule(epoch, num_epochs))
                sums = {"phase1_loss": 0.0, "loss": 0.0, "beta": 0.0}
                cases = {1: 0, 2: 0}
                for x_img, x_txt, targets in batches:
                    result = self.step(x_img, x_txt, targets)
                    for key in sums:
                        sums[key] += result[key]
                    cases[result["case"]] += 1
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{result['loss']:.4f}",
                                    beta=f"{result['beta']:.3f}", gamma=f"{self.gamma:.3f}")
                steps = max(sum(cases.values()), 1)
                summary = {key: value / steps for key, value in sums.items()}
                summary.update(epoch=epoch, gamma=self.gamma, case1_steps=cases[1],
                               case2_steps=cases[2])
                history.append(summary)
                self.epoch = epoch + 1
                if checkpoint_dir is not None:
                    self.save_checkpoint(checkpoint_dir)
        return history

    # ---- checkpoints (mmfast.train.checkpoint's layout, with the optimizer's state)
    def save_checkpoint(self, directory: str | os.PathLike) -> None:
        """The model, the optimizer's state and the trainer's: epoch, gamma, whether case 2
        trains the output layer. ``mmfast.train.load_checkpoint`` reads the model back."""
        checkpoint.save_checkpoint(directory, self.model, {
            "epoch": self.epoch, "gamma": self.gamma,
            "train_output_in_cross_active": self.train_output_in_cross_active,
        }, optimizer=self.optimizer)

    def load_checkpoint(self, directory: str | os.PathLike) -> None:
        """Restores the model, the optimizer and the epoch count from ``save_checkpoint``;
        ``fit`` then resumes where it stopped. Never unpickles anything."""
        config = checkpoint.resume(directory, self.model, self.optimizer,
                                   ("epoch", "gamma", "train_output_in_cross_active"),
                                   "CACNetTrainer.load_checkpoint")
        self.epoch, self.gamma = config["epoch"], config["gamma"]
        self.train_output_in_cross_active = config["train_output_in_cross_active"]
