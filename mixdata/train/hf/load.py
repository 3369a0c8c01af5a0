"""Real models from their folders: an HF VLM, a composed tower + LM, or a stage's `final/`.

Everything loads with transformers' own classes from local files (`local_files_only`): a
folder given as an fsspec URL is first copied whole into `$MIXDATA_CACHE/models/` under a
key of its URL and file listing (names and sizes), through a temporary name, so a copy that
exists is complete. Weights load in float32 (the optimizer's master copy; bf16 compute is
autocast's job).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from ...errors import MixdataError
from ...tokens.hf import cache_root
from .spec import ComposedModelSpec, HFModelSpec

VISION_TYPES = ("siglip_vision_model", "siglip2_vision_model", "clip_vision_model")


def local_folder(spec: str) -> Path:
    """A local folder for a model path or fsspec URL (copied once into the cache)."""
    if "://" not in spec:
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            raise MixdataError(f"model {spec!r}: expected a save_pretrained folder holding "
                               f"config.json; {path / 'config.json'} does not exist")
        return path
    import fsspec

    fs, root = fsspec.core.url_to_fs(spec)
    try:
        listing = sorted((info["name"], int(info.get("size") or 0))
                         for info in fs.find(root, detail=True).values())
    except (OSError, ValueError) as err:
        raise MixdataError(f"model {spec!r}: cannot list the folder ({err})") from None
    if not any(name.endswith("/config.json") for name, _ in listing):
        raise MixdataError(f"model {spec!r}: the folder holds no config.json")
    key = hashlib.sha256(json.dumps([spec, listing]).encode()).hexdigest()[:24]
    target = cache_root() / "models" / key
    if not target.is_dir():
        tmp = target.with_name(f"{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for name, _ in listing:
            relative = name[len(root.rstrip("/")) + 1:]
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(name, str(tmp / relative))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same copy first
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def pick_attention(requested: str, device: torch.device) -> str:
    """transformers' attn_implementation: `auto` is flash_attention_2 on CUDA where flash-attn
    is installed (varlen kernels from the restarting position ids), else sdpa."""
    if requested != "auto":
        if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise MixdataError("attention flash_attention_2 needs the flash-attn package "
                               "(pip install flash-attn) and a CUDA device")
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_pretrained(folder: Path, attention: str):
    """A VLM `save_pretrained` folder with AutoModelForImageTextToText (mixdata's composed
    type is registered by importing `composed`)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from . import composed  # noqa: F401 - registers mixdata_vlm with the auto classes
    from .arch import arch_of

    arch_of(AutoConfig.from_pretrained(str(folder), local_files_only=True))  # supported?
    return AutoModelForImageTextToText.from_pretrained(
        str(folder), local_files_only=True, dtype=torch.float32, attn_implementation=attention)


def vision_config_of(folder: Path):
    """The vision tower's config of a tower folder or of a full SigLIP / CLIP model folder."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    config = getattr(config, "vision_config", None) or config
    if config.model_type not in VISION_TYPES:
        raise MixdataError(f"vision tower {folder}: model type {config.model_type!r}; expected "
                           f"one of {', '.join(VISION_TYPES)} (a SigLIP, SigLIP2 or CLIP "
                           "folder)")
    if hasattr(config, "vision_use_head"):
        config.vision_use_head = False  # SigLIP's pooling head never reaches the LM
    return config


def compose(spec: ComposedModelSpec, tokenizer, *, seed: int, attention: str):
    """The tower and LM of `spec` from their folders, joined by a new connector drawn from
    `seed`; the LM's embeddings grow to the dialect tokenizer's added tokens."""
    from transformers import MODEL_MAPPING, AutoModelForCausalLM

    from .composed import MixdataVLMConfig, MixdataVLMForConditionalGeneration

    vision_folder, lm_folder = local_folder(spec.vision), local_folder(spec.lm)
    vision_config = vision_config_of(vision_folder)
    vision_class = MODEL_MAPPING[type(vision_config)]
    vision = vision_class.from_pretrained(str(vision_folder), config=vision_config,
                                          local_files_only=True, dtype=torch.float32,
                                          attn_implementation=attention)
    lm = AutoModelForCausalLM.from_pretrained(str(lm_folder), local_files_only=True,
                                              dtype=torch.float32, attn_implementation=attention)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if len(tokenizer.hf) > lm.get_input_embeddings().weight.shape[0]:
            lm.resize_token_embeddings(len(tokenizer.hf))
        c = spec.connector
        config = MixdataVLMConfig(
            vision_config=vision.config, text_config=lm.config,
            image_token_id=tokenizer.image_id, connector_kind=c.kind, connector_shuffle=c.shuffle,
            connector_latents=c.latents, connector_layers=c.layers, connector_heads=c.heads,
            vision_feature_layer=spec.vision_layer,
            tie_word_embeddings=bool(lm.config.tie_word_embeddings))
        with torch.device("meta"):  # shapes only: the parts come from the folders
            model = MixdataVLMForConditionalGeneration(config)
        connector = _real_connector(config)
    model.model.vision_model, model.model.language_model = vision, lm.model
    model.model.connector, model.lm_head = connector, lm.lm_head
    model.generation_config = lm.generation_config
    model.config._attn_implementation = attention
    if any(p.is_meta for p in model.parameters()):
        raise MixdataError("internal: the composed model kept unloaded parameters")
    return model


def _real_connector(config):
    from ..connector import build_connector

    return build_connector(config.connector_config(), config.vision_config.hidden_size,
                           config.text_config.hidden_size)


def load_model(spec: HFModelSpec | ComposedModelSpec, tokenizer, *, seed: int,
               init_from: Path | None, device: torch.device):
    """The stage's starting model on CPU: the previous stage's `final/` when given, else the
    spec's folder (or composition)."""
    attention = pick_attention(spec.attention, device)
    if init_from is not None:
        return load_pretrained(Path(init_from), attention)
    if isinstance(spec, HFModelSpec):
        return load_pretrained(local_folder(spec.hf), attention)
    return compose(spec, tokenizer, seed=seed, attention=attention)
