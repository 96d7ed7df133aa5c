"""Checkpoints: a directory with ``model.safetensors`` and ``config.json`` (the model's class
and constructor arguments, plus whatever the caller adds: labels, text hasher, feature recipe),
and for trainers that resume, ``optimizer.safetensors``. Loading never unpickles: the class comes
from ``mmfast.nn.MODELS`` by name."""

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmfast._io import atomic_path, write_text_atomic

CONFIG, WEIGHTS, OPTIMIZER = "config.json", "model.safetensors", "optimizer.safetensors"


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, extra: dict | None = None
                    ) -> None:
    """Write the checkpoint; config.json goes last, so its presence marks a complete one."""
    directory = Path(directory)
    tensors = {name: tensor.detach().cpu().contiguous()
               for name, tensor in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS) as temporary:
        save_file(tensors, temporary)
    config = {"model": type(model).__name__, "args": model.config(), **(extra or {})}
    write_text_atomic(directory / CONFIG, json.dumps(config, indent=1) + "\n")


def read_config(directory: str | os.PathLike) -> dict:
    """A checkpoint's config.json (FileNotFoundError naming the directory if it has none)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an mmfast checkpoint (no {CONFIG})")
    return json.loads(path.read_text())


def load_checkpoint(directory: str | os.PathLike) -> tuple[nn.Module, dict]:
    """``(model, config)`` from ``save_checkpoint``'s directory, in eval mode."""
    from mmfast.nn import MODELS

    directory = Path(directory)
    config = read_config(directory)
    if config.get("model") not in MODELS:
        raise ValueError(f"{directory / CONFIG}: model must be one of {sorted(MODELS)}, "
                         f"got {config.get('model')!r}")
    model = MODELS[config["model"]](**config["args"])
    model.load_state_dict(load_file(str(directory / WEIGHTS)))
    return model.eval(), config


def save_optimizer(directory: str | os.PathLike, optimizer: torch.optim.Optimizer) -> dict:
    """Write the optimizer state's tensors to ``optimizer.safetensors`` ("state.<param>.<key>")
    and return the rest (scalars, param groups) for the caller's JSON config."""
    tensors, scalars = {}, {}
    state_dict = optimizer.state_dict()
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    with atomic_path(Path(directory) / OPTIMIZER) as temporary:
        save_file(tensors, temporary)
    return {"state": scalars, "param_groups": state_dict["param_groups"]}


def load_optimizer(directory: str | os.PathLike, optimizer: torch.optim.Optimizer, rest: dict,
                   device: torch.device | str = "cpu") -> None:
    """Restore ``optimizer`` from ``save_optimizer``'s file and returned ``rest``."""
    state: dict[int, dict] = {}
    for name, value in load_file(str(Path(directory) / OPTIMIZER), device=str(device)).items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in rest["state"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
