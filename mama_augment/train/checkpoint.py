"""Run state in safetensors: tensors as tensors, scalars as JSON in the header.

No pickle anywhere: optimiser states are flattened to ``optim.<group>.state.<param
index>.<key>`` tensors plus a JSON description of the non-tensor parts; RNG states are
uint8 tensors. One file per checkpoint, written under a temporary name and renamed into
place, so a kill at any moment leaves either the old or the new checkpoint.
"""

from __future__ import annotations
from mama_augment.fileio import atomic_path

import json
from pathlib import Path

import torch


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {"state": json.dumps(metadata)} if metadata is not None else None
    with atomic_path(path, fsync=True) as tmp:
        save_file(clean, str(tmp), metadata=header)


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    tensors = {}
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
        for key in handle.keys():
            tensors[key] = handle.get_tensor(key)
    return tensors, json.loads(header["state"]) if "state" in header else {}


def load_metadata(path: Path) -> tuple[list[str], dict]:
    """(tensor names, JSON state of the header) without reading the tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
        names = list(handle.keys())
    return names, json.loads(header["state"]) if "state" in header else {}


def flatten_optimizer(state_dict: dict, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], description: dict, prefix: str) -> dict:
    state: dict[int, dict] = {}
    head = f"{prefix}.state."
    for name, value in tensors.items():
        if name.startswith(head):
            index, key = name[len(head) :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for index, entry in description.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": description["param_groups"]}


def rng_state() -> dict[str, torch.Tensor]:
    state = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"rng.cuda.{i}"] = s
    return state


def set_rng_state(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
