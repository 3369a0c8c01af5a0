"""What mixdata needs to know of each supported HF VLM architecture, by `config.model_type`.

- which dialect (collate family) its forward reads;
- which parameters are its vision tower, connector and language model (`groups`: parameter
  name prefixes, the longest match wins), so `trainable` and `lr` map onto real modules;
- `VisionFacts`: the geometry a shard's manifest must agree with and the vision numbers an
  MFU counter needs (patch size, width, depth, MLP width, tokens per view);
- `blank_image_loss`: a zero that runs the vision path on one blank image, for batches
  without images (DDP then sees every trainable parameter used, and under FSDP every rank
  calls every vision unit).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import MixdataError

VISION, CONNECTOR, LM = "vision", "connector", "lm"


@dataclass(frozen=True)
class Arch:
    model_type: str
    family: str                                   # the collate / dialect family
    groups: tuple[tuple[str, str], ...]           # (parameter-name prefix, module group)

    def group_of(self, name: str) -> str | None:
        """The module group of a parameter or module name (None: in no group)."""
        best = None
        for prefix, group in self.groups:
            if (name == prefix.rstrip(".") or name.startswith(prefix)) and \
                    (best is None or len(prefix) > len(best[0])):
                best = (prefix, group)
        return best[1] if best else None


def _idefics3_like(model_type: str, text: str, family: str = "idefics3") -> Arch:
    return Arch(model_type, family, (("model.vision_model.", VISION),
                                     ("model.connector.", CONNECTOR),
                                     (f"model.{text}.", LM), ("lm_head.", LM)))


_QWEN = (("model.visual.", VISION), ("model.visual.merger.", CONNECTOR),
         ("model.language_model.", LM), ("lm_head.", LM))
ARCHS: dict[str, Arch] = {
    "idefics3": _idefics3_like("idefics3", "text_model"),
    "smolvlm": _idefics3_like("smolvlm", "text_model"),
    "mixdata_vlm": _idefics3_like("mixdata_vlm", "language_model"),
    "llava_next": Arch("llava_next", "llava-next", (
        ("model.vision_tower.", VISION), ("model.multi_modal_projector.", CONNECTOR),
        ("model.image_newline", CONNECTOR), ("model.language_model.", LM), ("lm_head.", LM))),
    "internvl": Arch("internvl", "internvl", (
        ("model.vision_tower.", VISION), ("model.multi_modal_projector.", CONNECTOR),
        ("model.language_model.", LM), ("lm_head.", LM))),
    "qwen2_vl": Arch("qwen2_vl", "qwen2vl", _QWEN),
    "qwen2_5_vl": Arch("qwen2_5_vl", "qwen2vl", _QWEN),
}


def arch_of(config) -> Arch:
    """The architecture of an HF config; MixdataError listing the supported ones."""
    arch = ARCHS.get(getattr(config, "model_type", None))
    if arch is None:
        raise MixdataError(f"model type {getattr(config, 'model_type', None)!r} is not one the "
                           f"trainer supports; supported: {', '.join(sorted(ARCHS))}")
    return arch


@dataclass(frozen=True)
class VisionFacts:
    """Vision geometry and size of a model, from its config alone.

    `tile`: the square view size the tower reads (None: qwen2vl's views vary; `unit` is then
    its patch x merge side); `tokens_per_view` the LM tokens one tile becomes (None where it
    varies); `patch`, `hidden`, `layers`, `mlp` the tower's numbers (what an MFU counter needs:
    a tile of T px is (T / patch)² patches through `layers` blocks of width `hidden`);
    `merge`/`temporal`: qwen2vl's patch merge and temporal patch; `has_cls`: the tower adds a
    CLS token (CLIP)."""

    tile: int | None
    tokens_per_view: int | None
    patch: int
    hidden: int
    layers: int
    mlp: int
    unit: int | None = None
    merge: int = 1
    temporal: int = 1
    has_cls: bool = False


def vision_facts(config) -> VisionFacts:
    arch, vision = arch_of(config), config.vision_config
    if arch.family == "qwen2vl":  # Qwen2-VL names the width embed_dim, Qwen2.5-VL hidden_size
        hidden = getattr(vision, "embed_dim", None) or vision.hidden_size
        mlp = getattr(vision, "intermediate_size", None) or \
            int(hidden * getattr(vision, "mlp_ratio", 4))
        return VisionFacts(tile=None, tokens_per_view=None, patch=vision.patch_size,
                           hidden=hidden, layers=vision.depth, mlp=mlp,
                           unit=vision.patch_size * vision.spatial_merge_size,
                           merge=vision.spatial_merge_size,
                           temporal=vision.temporal_patch_size)
    tile, patch = _side(vision.image_size), _side(vision.patch_size)
    grid = tile // patch
    has_cls = vision.model_type.startswith("clip")
    if arch.model_type == "mixdata_vlm":
        tokens = config.connector_tokens(grid)
    elif arch.family == "idefics3":
        tokens = (grid // config.scale_factor) ** 2
    elif arch.family == "internvl":  # pixel shuffle by 1 / downsample_ratio, CLS dropped
        tokens = int(grid * config.downsample_ratio) ** 2
    else:  # llava-next: the unpadded grid varies, a base view is grid² (+ CLS when "full")
        tokens = grid * grid + (has_cls and config.vision_feature_select_strategy == "full")
    return VisionFacts(tile=tile, tokens_per_view=tokens, patch=patch,
                       hidden=vision.hidden_size, layers=vision.num_hidden_layers,
                       mlp=vision.intermediate_size, has_cls=has_cls)


def _side(value) -> int:
    """A square size given as an int or (height, width) (InternVL's vision config)."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise MixdataError(f"a non-square vision size {value} is not supported")
        return int(value[0])
    return int(value)


def image_token_id(config) -> int:
    return int(config.image_token_id)


def blank_image_loss(hf, arch: Arch, scale: float = 0.0) -> torch.Tensor:
    """`scale` x the sum of the vision path's output on one blank image: with the default 0
    it keeps the graph over every vision and connector parameter for a batch without
    images, changing nothing."""
    config, device = hf.config, hf.device
    dtype = next(hf.parameters()).dtype
    if arch.family == "qwen2vl":
        facts = vision_facts(config)
        width = 3 * facts.temporal * facts.patch ** 2
        pixels = torch.zeros(facts.merge ** 2, width, device=device, dtype=dtype)
        grid = torch.tensor([[1, facts.merge, facts.merge]], device=device)
        out = hf.model.get_image_features(pixel_values=pixels, image_grid_thw=grid)
    else:
        tile = _side(config.vision_config.image_size)
        if arch.family == "llava-next":
            out = _llava_blank(hf, tile, device, dtype)
        elif arch.family == "internvl":  # its views come flat: [N, 3, T, T]
            pixels = torch.zeros(1, 3, tile, tile, device=device, dtype=dtype)
            out = hf.model.get_image_features(pixel_values=pixels)
        else:  # all-zero views are dropped as padding, so the blank view is ones
            pixels = torch.ones(1, 1, 3, tile, tile, device=device, dtype=dtype)
            out = hf.model.get_image_features(pixel_values=pixels)
    features = out.pooler_output
    if isinstance(features, (list, tuple)):
        return sum(f.float().sum() for f in features) * scale
    return features.float().sum() * scale


def _llava_blank(hf, tile: int, device, dtype):
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    views = image_size_to_num_patches(image_size=(tile, tile),
                                      grid_pinpoints=hf.config.image_grid_pinpoints,
                                      patch_size=tile)
    pixels = torch.zeros(1, views, 3, tile, tile, device=device, dtype=dtype)
    sizes = torch.tensor([[tile, tile]], device=device)
    return hf.model.get_image_features(pixel_values=pixels, image_sizes=sizes)
