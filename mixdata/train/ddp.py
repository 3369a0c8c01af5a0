"""Process-group plumbing for `torchrun`: which rank we are, sums across ranks, DDP wrapping.

Without `torchrun` (no WORLD_SIZE in the environment) everything degrades to one process and
the collectives are identities, so the loop has one code path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import MixdataError


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise MixdataError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(requested)


def init_distributed(requested_device: str = "auto") -> Dist:
    """Join the process group torchrun set up (nccl on CUDA, gloo on CPU), or run alone."""
    device = pick_device(requested_device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(0, 1, device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def shutdown(ctx: Dist) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(ctx: Dist, value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (a copy; the input is left alone)."""
    total = value.detach().clone()
    if ctx.active:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def gather_objects(ctx: Dist, obj) -> list:
    """Every rank's `obj` (plain, picklable by the collective only), in rank order."""
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: Dist) -> None:
    if ctx.active:
        dist.barrier()


def wrap_model(ctx: Dist, model: torch.nn.Module) -> torch.nn.Module:
    if not ctx.active:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
