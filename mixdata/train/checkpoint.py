"""Checkpoints: tensors and plain containers only, written atomically, read weights_only.

A stage folder holds `checkpoint.pt` (the latest resumable state: model, optimizer,
scheduler, step, RNG and loader state) and, once the stage is done, `final.pt` (the model
weights with LoRA merged, which the next stage starts from).

Model and optimizer state are full (unsharded) state dicts keyed by parameter name, through
`torch.distributed.checkpoint.state_dict`: the same layout from one process, DDP or FSDP2,
with or without activation checkpointing, so any of them resumes a checkpoint of another
run with the same number of ranks.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..errors import MixdataError
from ..storage import atomic_file

CHECKPOINT = "checkpoint.pt"
FINAL = "final.pt"


def save_atomic(payload: dict, path: Path) -> None:
    """torch.save through the atomic writer: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as handle:
        torch.save(payload, handle)


def load_file(path: Path) -> dict:
    """Load with weights_only=True: tensors and plain containers, never arbitrary pickles."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MixdataError(f"no checkpoint at {path}") from None
    except Exception as err:  # noqa: BLE001 - an unpickling refusal or a truncated file
        raise MixdataError(f"cannot read checkpoint {path}: {err}") from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(model, optimizer) -> tuple[dict, dict]:
    """(model, optimizer) full state dicts on CPU, keyed by parameter name. Under FSDP it is
    a collective that every rank must call; the main rank gets the tensors."""
    return get_state_dict(model, optimizer,
                          options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_checkpoint(path: Path, *, training: tuple[dict, dict], scheduler, step: int,
                    loader_state: dict, extra: dict | None = None) -> None:
    """Write `training` (from `training_state`) with the schedule, step, RNG and loaders."""
    model_state, optimizer_state = training
    save_atomic({"model": model_state, "optimizer": optimizer_state,
                 "scheduler": scheduler.state_dict(), "step": step, "rng": rng_state(),
                 "loader": loader_state, "extra": extra or {}}, path)


def restore_checkpoint(path: Path, *, model, optimizer, scheduler) -> dict:
    """Load state into model/optimizer/scheduler and the RNG; returns the whole payload.
    Every rank reads the file and keeps its own shard (under FSDP)."""
    payload = load_file(path)
    set_state_dict(model, optimizer, model_state_dict=payload["model"],
                   optim_state_dict=payload["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(payload["scheduler"])
    restore_rng(payload["rng"])
    return payload


def save_weights(path: Path, model, extra: dict | None = None) -> None:
    save_atomic({"model": model.state_dict(), "extra": extra or {}}, path)


def load_weights(path: Path, model) -> dict:
    payload = load_file(path)
    model.load_state_dict(payload["model"])
    return payload
