"""Training FLOPs, MFU and the per-step JSONL log.

FLOPs follow the usual 2·params per token per matrix multiply (Kaplan et al., PaLM appendix
B): a forward pass costs 2·N·tokens, the activation-gradient pass another 2·N·tokens and the
weight-gradient pass another 2·N·tokens, plus attention's score and value products. A frozen
module upstream of everything that trains runs forward only, so it is counted at 2·N, not
6·N: MFU counts the work actually done, vision encoder included: per view, exactly as
`flops.vit_view_flops` counts the ViT (patch embedding, blocks and attention).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .flops import ViTShape, vit_view_flops

# Dense bf16 peak FLOP/s per GPU (vendor datasheets, without sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
             "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, or None where it is unknown (and on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def linear_params(module: torch.nn.Module) -> int:
    """Weights that take part in matrix multiplies: linear and conv layers (an LM head tied
    to the embeddings counts, the embedding lookup does not) and LoRA adapters."""
    from .lora import LoRALinear

    total = 0
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            total += layer.weight.numel()
        elif isinstance(layer, LoRALinear):
            total += layer.lora_a.numel() + layer.lora_b.numel()
    return total


def pass_factor(trains_weights: bool, grads_flow: bool) -> int:
    """FLOPs per weight per token: forward 2, activation grads 2, weight grads 2."""
    return 2 + (2 if grads_flow else 0) + (2 if trains_weights else 0)


@dataclass(frozen=True)
class FlopModel:
    """Per-step FLOPs of the VLM from token and tile counts."""

    vision: ViTShape
    vision_adapter_params: int  # LoRA adapters on the ViT's linear layers, beyond `vision`
    vision_trains: bool         # its weights train (full mode)
    vision_flows: bool          # activation gradients flow through it (full or LoRA)
    connector: object          # ConnectorConfig: tokens per view from the patch grid
    connector_params: int
    lm_params: int
    lm_dim: int
    lm_layers: int
    connector_factor: int
    lm_factor: int

    def step_flops(self, *, views: int, tile: int, doc_lengths_sq: float, tokens: int) -> float:
        """FLOPs of one training step over `tokens` real tokens and `views` T×T image views.

        `doc_lengths_sq` is Σ len² over packed documents: causal attention within each
        document costs 2·2·dim·len²/2 per layer forward. The connector is counted per output
        token: exact for pixel shuffle, a floor for the perceiver.
        """
        grid = tile // self.vision.patch_size
        per_view = vit_view_flops(self.vision, tile, trains_weights=self.vision_trains,
                                  grads_flow=self.vision_flows)
        adapters = grid * grid * self.vision_factor * self.vision_adapter_params
        vision = views * (per_view + adapters)
        connector = (views * self.connector.tokens_per_tile(grid) * self.connector_factor
                     * self.connector_params)
        lm = tokens * self.lm_factor * self.lm_params
        # scores and values have no weights: backward is twice forward whenever grads flow
        attention_factor = 6 if self.lm_factor > 2 else 2
        lm += attention_factor * 2 * self.lm_layers * self.lm_dim * doc_lengths_sq / 2
        return float(vision + connector + lm)

    @property
    def vision_factor(self) -> int:
        return pass_factor(self.vision_trains, self.vision_flows)


def flop_model(model) -> FlopModel:
    """Counts for the model as configured for this stage (requires_grad already set)."""
    trains = {name: any(p.requires_grad for p in getattr(model, name).parameters())
              for name in ("vision", "connector", "lm")}
    full = {name: trains[name] and all(p.requires_grad for p in getattr(model, name).parameters()
                                       if p.dim() >= 2) for name in trains}
    # activation gradients flow through a module when it or anything before it trains
    flows = {"vision": trains["vision"], "connector": trains["vision"] or trains["connector"],
             "lm": any(trains.values())}
    vision = vit_shape(model.config.vision)
    return FlopModel(
        vision=vision,
        vision_adapter_params=linear_params(model.vision) - vision.patch_weights
        - vision.block_weights,
        vision_trains=full["vision"], vision_flows=flows["vision"],
        connector=model.config.connector, connector_params=linear_params(model.connector),
        lm_params=linear_params(model.lm),
        lm_dim=model.config.lm.dim, lm_layers=model.config.lm.layers,
        connector_factor=pass_factor(full["connector"], flows["connector"]),
        lm_factor=pass_factor(full["lm"], flows["lm"]),
    )


def vit_shape(config) -> ViTShape:
    """The bundled ViT (`vision.VisionConfig`) in FLOP terms."""
    return ViTShape(hidden_size=config.dim, num_layers=config.layers, patch_size=config.patch,
                    intermediate_size=int(config.dim * config.mlp_ratio))


def doc_lengths_squared(doc_ids: torch.Tensor) -> float:
    """Σ len² over the packed documents of a batch (doc_ids -1 on padding)."""
    rows, length = doc_ids.shape
    real = doc_ids >= 0
    keys = (torch.arange(rows).unsqueeze(1) * length + doc_ids.long())[real]
    return float((torch.bincount(keys).double() ** 2).sum()) if keys.numel() else 0.0


def mfu(flops: float, seconds: float, peak: float | None, world_size: int) -> float | None:
    if peak is None or seconds <= 0:
        return None
    return flops / (seconds * peak * world_size)


class MetricsLog:
    """Append one JSON line per step; only the process that owns the log writes."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def summarize(records: list[dict]) -> dict:
    """Throughput of a stage from its step records; the first step (warm-up, compilation)
    is left out when there are others."""
    steady = records[1:] or records
    seconds = sum(r["step_time"] for r in steady)
    mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]
    return {"steps": len(records), "steps_per_s": len(steady) / seconds,
            "tokens_per_s": sum(r["tokens_per_s"] * r["step_time"] for r in steady) / seconds,
            "images_per_s": sum(r["images_per_s"] * r["step_time"] for r in steady) / seconds,
            "data_wait": sum(r["data_wait"] * r["step_time"] for r in steady) / seconds,
            "mfu": sum(mfus) / len(mfus) if mfus else None,
            "final_loss": records[-1]["loss"]}


def format_summary(stage: str, summary: dict) -> str:
    mfu_text = "n/a (CPU)" if summary["mfu"] is None else f"{summary['mfu']:.1%}"
    return (f"stage {stage}: {summary['steps']} steps, {summary['steps_per_s']:.2f} steps/s, "
            f"{summary['tokens_per_s']:.0f} real tokens/s, {summary['images_per_s']:.1f} "
            f"images/s, data wait {summary['data_wait']:.1%}, MFU {mfu_text}, final loss "
            f"{summary['final_loss']:.3f}")


def read_metrics(path: Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]
