"""Resumable training (``mmfast train --checkpoint-every N``, ``--resume``): a run's state,
saved every few epochs, from which a killed run goes on as if it had never stopped.

``TrainingState`` is one run's folder. It holds ``run.json`` (what the run is: system, recipe,
data; a resumed run must be the same) and one folder per stage, a model trained (one, or one per
value a recipe's "auto" tries), each holding its newest saved epoch ``epoch-NNNN/`` in
``mmfast.train.checkpoint``'s layout: the model, the optimizers, and in ``state.safetensors``
the random generators and whatever the epoch loop adds (the best epoch's weights). Rank 0
writes a new epoch folder, whose config.json, written last, marks it complete, then removes the
older ones: a kill at any moment leaves a complete state behind. Every rank reads the same one.
"""

import json
import os
import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mmfast._io import load_tensors, write_text_atomic
from mmfast.train import checkpoint
from mmfast.train.distributed import barrier, process_group

RUN = "run.json"
# Fault injection: a run given MMFAST_KILL_AFTER_EPOCH=K kills itself (SIGKILL: no cleanup, as a
# lost node) right after saving epoch K's state; the tests, and users rehearsing a restart.
KILL_AFTER_EPOCH = "MMFAST_KILL_AFTER_EPOCH"


class TrainingState:
    """The state folder ``directory`` of a run described by ``identity`` (JSON: system, recipe,
    data), saved every ``every`` epochs (None with ``resume``: as the run being resumed did).
    Without ``resume`` any earlier state there is discarded; with it, a state of a different
    run is a ValueError naming what differs, and no state at all starts from epoch 0 (given
    ``every``). Every rank of a process group constructs it (it synchronizes them)."""

    def __init__(self, directory: str | os.PathLike, identity: dict, every: int | None,
                 resume: bool):
        self.directory, self.identity = Path(directory), identity
        self.rank, self.world = process_group()
        run = self.directory / RUN
        # every rank reads and checks before rank 0 writes: a mismatch stops them all alike
        previous = _read_run(run) if resume and run.is_file() else None
        if previous is not None:
            _check_same_run(self.directory, previous["identity"], identity)
            every = every or previous["every"]
        if every is None:
            raise ValueError(f"--resume: {self.directory} holds no training state (the run "
                             "saved none yet, or finished): pass --checkpoint-every N to "
                             "train afresh and save one")
        self.every, self.resumed = every, previous is not None
        barrier(self.world)
        if self.rank == 0 and previous is None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory.mkdir(parents=True)
            write_text_atomic(run, json.dumps({"identity": identity, "every": every}) + "\n")
        barrier(self.world)

    def stage(self, recipe: dict) -> "Stage":
        """The stage of the model trained with ``recipe`` (a dict), named by where it departs
        from the run's recipe (an "auto" resolved: ``gate=image``), else ``model``."""
        base = self.identity.get("recipe", {})
        name = ",".join(f"{key}={value}" for key, value in recipe.items()
                        if base.get(key) != value)
        return Stage(self, self.directory / (re.sub(r"[^\w.=,-]", "_", name) or "model"))

    def remove(self) -> None:
        """Once the run's checkpoint is written, the state has served: rank 0 removes it."""
        if self.rank == 0:
            shutil.rmtree(self.directory, ignore_errors=True)


def _read_run(path: Path) -> dict:
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: expected the JSON a run with --checkpoint-every writes, got "
                         f"unreadable JSON ({error}): train afresh without --resume") from None
    if not (isinstance(run, dict) and isinstance(run.get("identity"), dict)
            and isinstance(run.get("every"), int)):
        raise ValueError(f"{path}: expected an object with 'identity' and 'every', got "
                         f"{_short(run)}: train afresh without --resume")
    return run


def _check_same_run(directory: Path, saved: dict, current: dict) -> None:
    differences = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += [f"{key}.{name} {old.get(name)!r} (now {new.get(name)!r})"
                            for name in sorted(set(old) | set(new))
                            if old.get(name) != new.get(name)]
        elif old != new:
            differences.append(f"{key} {_short(old)} (now {_short(new)})")
    if differences:
        raise ValueError(f"--resume: expected the run whose state {directory} holds, got a "
                         f"different one: {'; '.join(differences)}. Resume with the same "
                         "system, recipe, seed and data, or train afresh without --resume")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Stage:
    """One model's saved epochs in ``directory`` (``TrainingState.stage``)."""

    def __init__(self, state: TrainingState, directory: Path):
        self.state, self.directory = state, directory

    def latest(self) -> Path | None:
        """The newest complete epoch folder, if any."""
        done = sorted(path for path in self.directory.glob("epoch-*")
                      if (path / checkpoint.CONFIG).is_file())
        return done[-1] if done else None

    def due(self, epoch: int, last: bool) -> bool:
        return last or epoch % self.state.every == 0


@dataclass
class Resumable:
    """What an epoch loop restores to go on as if never stopped: the model, its optimizers,
    the random generators of its shuffles (torch's default one, which dropout draws from, is
    always added), learning-rate schedulers, and ``counters``, JSON values kept in place.
    ``stage`` None: nothing is saved or restored."""

    stage: Stage | None
    model: nn.Module
    optimizers: list
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    schedulers: list = field(default_factory=list)
    counters: dict = field(default_factory=dict)

    def _generators(self) -> dict[str, torch.Generator]:
        return {**self.generators, "torch": torch.default_generator}

    def restore(self) -> tuple[dict, dict[str, torch.Tensor]] | None:
        """Loads the stage's newest saved epoch into the model, optimizers, generators,
        schedulers and counters; returns its config (``epoch``: epochs done, and what ``save``
        was given) and its other tensors, or None when there is nothing to resume."""
        stage = self.stage
        latest = None if stage is None or not stage.state.resumed else stage.latest()
        if latest is None:
            return None
        config = checkpoint.resume(latest, self.model, self.optimizers, ("epoch", "counters"),
                                   "--resume")
        tensors = load_tensors(latest / checkpoint.STATE)
        for name, generator in self._generators().items():
            generator.set_state(tensors.pop(f"generator.{name}"))
        for scheduler, saved in zip(self.schedulers, config["schedulers"]):
            scheduler.load_state_dict(saved)
        self.counters.update(config["counters"])
        # no rank goes on (and rank 0 removes older epochs) before every rank has read it
        barrier(stage.state.world)
        return config, tensors

    def save(self, epoch: int, last: bool, tensors: dict[str, torch.Tensor] | None = None,
             **extra) -> None:
        """After ``epoch`` epochs: when due (every ``--checkpoint-every``, and the ``last``),
        rank 0 writes the state with ``extra`` JSON and ``tensors``; the others wait."""
        stage = self.stage
        if stage is None or not stage.due(epoch, last):
            return
        state = stage.state
        if state.rank == 0:
            folder = stage.directory / f"epoch-{epoch:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            checkpoint.save_checkpoint(folder, self.model, {
                "epoch": epoch, "counters": self.counters,
                "schedulers": [scheduler.state_dict() for scheduler in self.schedulers],
                **extra}, optimizer=self.optimizers, state={
                    **{f"generator.{name}": generator.get_state()
                       for name, generator in self._generators().items()},
                    **(tensors or {})})
            for older in stage.directory.glob("epoch-*"):
                if older != folder:
                    shutil.rmtree(older, ignore_errors=True)
        barrier(state.world)
        if os.environ.get(KILL_AFTER_EPOCH) == str(epoch):
            os.kill(os.getpid(), signal.SIGKILL)
