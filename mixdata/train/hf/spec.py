"""`train.model` for real models: an HF VLM folder, or a vision tower + causal LM composed
with mixdata's connector. Pure dataclasses: `mixdata validate` parses them without torch.

```yaml
train:
  model: {hf: /models/SmolVLM-256M-Instruct}       # or any fsspec URL of such a folder
  # or, Prismatic / nanoVLM style:
  model:
    vision: /models/siglip-base-patch16-224         # SigLIP / SigLIP2 / CLIP (vision part)
    lm: /models/SmolLM2-135M                        # Llama / Qwen2 / SmolLM2-style causal LM
    connector: {kind: pixel_shuffle, shuffle: 2}    # or {kind: perceiver, latents: 64}
```
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...config import Invalid

# transformers' attn_implementation names; auto: flash_attention_2 on CUDA where flash-attn
# is installed, else sdpa (both isolate packed documents from restarting position ids)
Attention = Literal["auto", "sdpa", "flex_attention", "flash_attention_2", "eager"]


@dataclass(frozen=True, kw_only=True)
class HFModelSpec:
    """An HF `save_pretrained` VLM folder (local path or fsspec URL): Idefics3 / SmolVLM,
    LLaVA-NeXT, Qwen2-VL or InternVL, loaded with transformers' own classes."""

    hf: str
    attention: Attention = "auto"
    lr: float = 1e-4          # learning rate of a stage that names none

    def __post_init__(self) -> None:
        if not self.hf:
            raise Invalid("hf", self.hf, "a model folder or URL")
        if self.lr <= 0:
            raise Invalid("lr", self.lr, "a positive learning rate")

    @property
    def label(self) -> str:
        return f"hf:{self.hf}"


@dataclass(frozen=True, kw_only=True)
class ConnectorSpec:
    """mixdata's connector (`mixdata.train.connector`): pixel shuffle by `shuffle` then a
    2-layer MLP (tokens per tile (grid / shuffle)²), `mlp` (that MLP on every patch, as
    LLaVA-1.5 and Prismatic: grid² tokens per tile), or a perceiver of `latents` queries."""

    kind: Literal["pixel_shuffle", "mlp", "perceiver"] = "pixel_shuffle"
    shuffle: int = 2
    latents: int = 64
    layers: int = 2
    heads: int = 4

    def __post_init__(self) -> None:
        for name in ("shuffle", "latents", "layers", "heads"):
            if getattr(self, name) <= 0:
                raise Invalid(name, getattr(self, name), "a positive integer")


@dataclass(frozen=True, kw_only=True)
class ComposedModelSpec:
    """A vision tower folder and a causal LM folder joined by mixdata's connector.

    `vision_layer`: which hidden state of the tower feeds the connector (-1 the last, -2
    the penultimate as LLaVA does); a CLIP tower's CLS token is dropped.
    """

    vision: str
    lm: str
    connector: ConnectorSpec = field(default_factory=ConnectorSpec)
    vision_layer: int = -1
    attention: Attention = "auto"
    lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise Invalid("lr", self.lr, "a positive learning rate")

    @property
    def label(self) -> str:
        return f"{self.vision} + {self.connector.kind} + {self.lm}"


def real_model_spec(data: object) -> type | None:
    """Which spec class a raw `train.model` mapping means (None: a built-in preset)."""
    if isinstance(data, dict) and "hf" in data:
        return HFModelSpec
    if isinstance(data, dict) and ("vision" in data or "lm" in data):
        return ComposedModelSpec
    return None
