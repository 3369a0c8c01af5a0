"""Spreading the model over ranks: FSDP2 or DDP, activation checkpointing, bf16 compute.

`parallelize(model, ctx, spec, blocks=None)` applies, in torchtitan's order:
1. activation checkpointing (`spec.activation_checkpointing`): each block is replaced in its
   parent by `checkpoint_wrapper(block)` (non-reentrant), which keeps only the block's
   input in forward and recomputes the block in backward. State-dict keys do not change;
2. FSDP2 (`strategy: fsdp` with a process group): `fully_shard(block)` for every block, then
   `fully_shard(model)` for the rest (embeddings, patch embedding, connector, norms, the
   tied head). The model is sharded in place and returned; its parameters become DTensor
   shards, so the optimizer must be built after this call. DDP (`strategy: ddp`, several
   ranks): `DistributedDataParallel(model)`. Otherwise the model itself.

Which modules are blocks, `transformer_blocks(model)`:
- a model that defines `transformer_blocks()` gets its own answer (the hook for wrappers of
  HF models);
- the bundled VLM: its ViT's blocks and its LM's blocks;
- any other model: the outermost modules whose class is named in the `_no_split_modules` of
  one of its HF `PreTrainedModel` submodules (what accelerate's FSDP auto-wrap uses).
`blocks_of_class(model, ["SiglipEncoderLayer", "LlamaDecoderLayer"])` names them
explicitly; pass the list as `parallelize(..., blocks=...)`.

Under FSDP every rank must call every sharded unit equally often in each micro-batch (each
call all-gathers): the bundled VLM runs its vision tower on a blank tile when a batch has no
image for that reason, and a wrapped model must do the same.

Gradient accumulation: DDP skips the all-reduce on all but the last micro-batch (`no_sync`);
FSDP2 reduce-scatters after every micro-batch so gradients stay sharded (memory before
communication). Both average gradients over ranks, so the loop's loss scaling is shared.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from ..errors import MixdataError
from .config import ParallelSpec
from .ddp import Dist, wrap_model


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules to checkpoint and shard one by one (see the module docstring)."""
    if callable(getattr(model, "transformer_blocks", None)):
        return list(model.transformer_blocks())
    vision, lm = getattr(model, "vision", None), getattr(model, "lm", None)
    if isinstance(getattr(vision, "blocks", None), nn.ModuleList) and \
            isinstance(getattr(lm, "blocks", None), nn.ModuleList):
        return [*vision.blocks, *lm.blocks]
    names = {name for module in model.modules()
             for name in (getattr(module, "_no_split_modules", None) or ())}
    blocks = blocks_of_class(model, names)
    if not blocks:
        raise MixdataError(
            f"cannot tell the transformer blocks of {type(model).__name__}: give it a "
            "transformer_blocks() method, or pass parallelize(..., blocks=blocks_of_class("
            "model, [block class names]))")
    return blocks


def blocks_of_class(model: nn.Module, class_names: Iterable[str]) -> list[nn.Module]:
    """The outermost submodules whose class name is in `class_names`, in module order (a
    match inside another match is left to its parent: one checkpoint and shard unit each)."""
    wanted, found, inside = set(class_names), [], set()
    for name, module in model.named_modules():
        if any(name.startswith(outer + ".") for outer in inside):
            continue
        if type(module).__name__ in wanted and module is not model:
            found.append(module)
            inside.add(name)
    return found


def parallelize(model: nn.Module, ctx: Dist, spec: ParallelSpec,
                blocks: Sequence[nn.Module] | None = None) -> nn.Module:
    """Checkpointing, then FSDP2 or DDP, per `spec`; returns the module the loop calls."""
    units = transformer_blocks(model) if blocks is None else list(blocks)
    if spec.activation_checkpointing:
        units = checkpoint_blocks(model, units)
    if spec.strategy == "fsdp" and dist.is_initialized():
        shard(model, units, ctx, mixed_precision=spec.mixed_precision)
        return model
    return wrap_model(ctx, model)


def checkpoint_blocks(model: nn.Module, blocks: Sequence[nn.Module]) -> list[nn.Module]:
    """Replace each block in its parent by a non-reentrant checkpoint wrapper; returns them."""
    parents = {id(child): (parent, name) for parent in model.modules()
               for name, child in parent.named_children()}
    wrapped = []
    for block in blocks:
        if id(block) not in parents:
            raise MixdataError(f"a block to checkpoint ({type(block).__name__}) is not a "
                               "submodule of the model")
        parent, name = parents[id(block)]
        wrapper = checkpoint_wrapper(block)
        setattr(parent, name, wrapper)  # ModuleList children are named "0", "1", ...
        wrapped.append(wrapper)
    return wrapped


def shard(model: nn.Module, blocks: Sequence[nn.Module], ctx: Dist, *,
          mixed_precision: str) -> None:
    """fully_shard every block, then the root, over all ranks (a 1-D mesh)."""
    mesh = init_device_mesh(ctx.device.type, (dist.get_world_size(),))
    dtype = compute_dtype(mixed_precision, ctx.device)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) \
        if dtype is not None else MixedPrecisionPolicy()
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def compute_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for `bf16` (and `auto` on CUDA), None for fp32 compute."""
    if mixed_precision == "none" or (mixed_precision == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise MixdataError("this GPU has no bfloat16 support; set train.parallel."
                           "mixed_precision: none")
    return torch.bfloat16


def autocast(model: nn.Module, device: torch.device, mixed_precision: str):
    """The forward's precision: bf16 autocast, unless FSDP2 already computes in bf16 (its
    MixedPrecisionPolicy casts the parameters) or fp32 was asked for."""
    if compute_dtype(mixed_precision, device) is None or is_sharded(model):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def accumulating(model: nn.Module, last: bool):
    """The context of one micro-batch's backward: DDP all-reduces on the last one only."""
    if last or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def whole_model(model: nn.Module, rebuild: Callable[[], nn.Module], ctx: Dist) -> nn.Module | None:
    """An unsharded copy of an FSDP model on the main rank (None on the others), for its
    final weights and eval: `rebuild()` makes a model of the same structure, which gets the
    gathered full state dict. Every rank must call this (the gather is a collective)."""
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                   cpu_offload=True))
    if not ctx.is_main:
        return None
    whole = rebuild()
    whole.load_state_dict(weights)
    return whole.to(ctx.device)
