"""Checkpoints: a directory with ``model.safetensors`` and ``config.json`` (the model's class
and constructor arguments, plus whatever the caller adds: labels, text hasher, feature recipe,
a trainer's epoch) and, to resume training, ``optimizer.safetensors`` (the optimizer's tensors,
or several optimizers' numbered "0.", "1.", ...; their other state and param groups go into
config.json under ``"optimizer"``) and ``state.safetensors`` (a trainer's own tensors: its
shuffle generators' states, the best epoch's weights).
Loading never unpickles: the class comes from ``mmfast.nn.MODELS`` by name."""

import itertools
import json
import os
from pathlib import Path

import torch
from torch import nn

from mmfast._io import load_tensors, save_tensors_atomic, write_text_atomic

CONFIG, WEIGHTS, OPTIMIZER = "config.json", "model.safetensors", "optimizer.safetensors"
STATE = "state.safetensors"


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, extra: dict | None = None,
                    optimizer: torch.optim.Optimizer | list | None = None,
                    state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the checkpoint, with ``optimizer``'s state (or a list of optimizers') and a
    trainer's ``state`` tensors when given. Each file is written
    atomically; an existing config.json is removed first and the new one written last, so its
    presence marks a complete checkpoint, also when this overwrites an earlier one (a crash in
    between leaves no config.json, never new weights beside the old config)."""
    directory = Path(directory)
    (directory / CONFIG).unlink(missing_ok=True)
    save_tensors_atomic(directory / WEIGHTS, model.state_dict())
    config = {"model": type(model).__name__, "args": model.config(), **(extra or {})}
    if optimizer is not None:
        tensors, config["optimizer"] = _split_optimizers(optimizer)
        save_tensors_atomic(directory / OPTIMIZER, tensors)
    if state is not None:
        save_tensors_atomic(directory / STATE, state)
    write_text_atomic(directory / CONFIG, json.dumps(config, indent=1) + "\n")


def _read_config(directory: str | os.PathLike) -> dict:
    """The config.json of ``save_checkpoint``'s directory."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file():
        raise FileNotFoundError(f"{directory} is not an mmfast checkpoint (no {CONFIG}: never "
                                f"saved, or its save did not finish)")
    try:
        config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{directory / CONFIG}: expected an mmfast checkpoint's JSON config, "
                         f"got unreadable JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{directory / CONFIG}: expected a JSON object, got "
                         f"{type(config).__name__}")
    return config


def load_checkpoint(directory: str | os.PathLike) -> tuple[nn.Module, dict]:
    """``(model, config)`` from ``save_checkpoint``'s directory, in eval mode."""
    from mmfast.nn import MODELS

    directory = Path(directory)
    config = _read_config(directory)
    if config.get("model") not in MODELS:
        raise ValueError(f"{directory / CONFIG}: model must be one of {sorted(MODELS)}, "
                         f"got {config.get('model')!r}")
    try:
        model = _built_from(MODELS[config["model"]], config["args"],
                            load_tensors(directory / WEIGHTS))
    except (KeyError, TypeError, RuntimeError) as error:  # args or weights of another model
        raise ValueError(f"{directory}: config.json and model.safetensors do not make a "
                         f"{config['model']} ({error})") from None
    return model.eval(), config


def _built_from(cls, args: dict, tensors: dict) -> nn.Module:
    """``cls(**args)`` holding ``tensors``. Built on the meta device and given the loaded
    tensors, so no weight is initialized only to be overwritten: a text model's 100k x 50
    embedding cost 0.8-2 s of every classify run so. A checkpoint that lacks a tensor the model
    fills in as it loads (older formats: ``_load_from_state_dict`` defaults) leaves it on the
    meta device; such a model is built again the usual way."""
    with torch.device("meta"):
        model = cls(**args)
    model.load_state_dict(tensors, assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        model = cls(**args)
        model.load_state_dict(tensors)
    return model


def load_optimizer_state(directory: str | os.PathLike, optimizer: torch.optim.Optimizer) -> None:
    """Restore ``optimizer`` (built like the saved one, over the loaded model's parameters) from
    a checkpoint saved with an optimizer; its tensors move to the parameters' devices."""
    directory = Path(directory)
    _load_optimizer(directory, _read_config(directory), optimizer)


def resume(directory: str | os.PathLike, model: nn.Module,
           optimizer: torch.optim.Optimizer | list, keys: tuple[str, ...], where: str) -> dict:
    """Restore a trainer's ``model`` and ``optimizer`` (or list of them) in place from
    ``save_checkpoint``'s directory, which must hold a model of the same class and arguments
    and the trainer's config ``keys``; returns the config. Never unpickles."""
    directory = Path(directory)
    config = _read_config(directory)
    expected = {"model": type(model).__name__, "args": model.config()}
    found = {"model": config.get("model"), "args": config.get("args")}
    missing = [key for key in keys if key not in config]
    if found != expected or missing:
        lacking = f" without {missing}" if missing else ""
        raise ValueError(f"{where}: {directory / CONFIG} holds a model {found}{lacking}; it "
                         f"must hold a trainer checkpoint of {expected}")
    model.load_state_dict(load_tensors(directory / WEIGHTS))
    _load_optimizer(directory, config, optimizer)
    return config


def _load_optimizer(directory: Path, config: dict, optimizer: torch.optim.Optimizer | list
                    ) -> None:
    if "optimizer" not in config:
        raise ValueError(f"{directory / CONFIG}: the checkpoint holds no optimizer state "
                         "(save_checkpoint was not given an optimizer)")
    tensors = load_tensors(directory / OPTIMIZER)
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer.load_state_dict(_join_optimizer_state(tensors, config["optimizer"]))
        return
    rests = config["optimizer"]
    if not isinstance(rests, list) or len(rests) != len(optimizer):
        raise ValueError(f"{directory / CONFIG}: expected the state of {len(optimizer)} "
                         f"optimizers, got {len(rests) if isinstance(rests, list) else 1}")
    for number, (one, rest) in enumerate(zip(optimizer, rests)):
        prefix = f"{number}."
        one.load_state_dict(_join_optimizer_state(
            {name[len(prefix):]: value for name, value in tensors.items()
             if name.startswith(prefix)}, rest))


def _split_optimizers(optimizer: torch.optim.Optimizer | list) -> tuple[dict, dict | list]:
    """``_split_optimizer_state`` of one optimizer, or of each of a list, numbered."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return _split_optimizer_state(optimizer.state_dict())
    tensors, rests = {}, []
    for number, one in enumerate(optimizer):
        part, rest = _split_optimizer_state(one.state_dict())
        tensors.update({f"{number}.{name}": value for name, value in part.items()})
        rests.append(rest)
    return tensors, rests


def _split_optimizer_state(state_dict: dict) -> tuple[dict, dict]:
    """An optimizer state dict as safetensors tensors ("state.<param>.<key>") and the JSON rest."""
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"state": scalars, "param_groups": state_dict["param_groups"]}


def _join_optimizer_state(tensors: dict, rest: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in rest["state"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}
