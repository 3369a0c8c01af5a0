"""A recipe's image settings checked against a model folder's processor configs (pure on JSON).

transformers' processors read `preprocessor_config.json` (the image processor) and
`processor_config.json` (the processor: image_seq_len, patch_size, ...). Where a folder has
them, every stage's effective image settings (the recipe's value, else the preset default)
must be what they say, or the shards would not be what the processor gives for the same
images. A mismatch is a `RecipeError` naming the recipe key and the value to set.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import RecipeError
from ..image.presets import DEFAULTS
from .hf import read_json

# PIL resampling codes in image processor configs
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class Expected:
    """One setting: the recipe key (under the stage's `image:`, or a top-level key), the value
    the folder implies, and where the folder says so."""

    key: str
    value: object
    source: str


def _size(config: dict, *names: str):
    size = config.get("size")
    if isinstance(size, dict):
        for name in names:
            if size.get(name) is not None:
                return size[name]
    return None


def _common(image: dict, where: str) -> list[Expected]:
    out = []
    if image.get("resample") in RESAMPLE:
        out.append(Expected("filter", RESAMPLE[image["resample"]], f"{where} resample"))
    for name in ("mean", "std"):
        value = image.get(f"image_{name}")
        if isinstance(value, list) and len(value) == 3:
            out.append(Expected(name, [float(v) for v in value], f"{where} image_{name}"))
    return out


def _idefics3(image: dict, proc: dict, tile: int) -> list[Expected]:
    pre, out = "preprocessor_config.json", []
    longest = _size(image, "longest_edge")
    encoder = (image.get("max_image_size") or {}).get("longest_edge")
    if encoder is not None:
        out.append(Expected("tile", encoder, f"{pre} max_image_size.longest_edge"))
    if image.get("do_image_splitting") is False:  # one view: the image resized to one tile
        out.append(Expected("longest_edge", encoder or tile, f"{pre} do_image_splitting: false"))
    elif longest is not None:
        out.append(Expected("longest_edge", longest, f"{pre} size.longest_edge"))
    if proc.get("image_seq_len") is not None:
        out.append(Expected("^image_tokens_per_tile", proc["image_seq_len"],
                            "processor_config.json image_seq_len"))
    return out


def _llava_next(image: dict, proc: dict, tile: int) -> list[Expected]:
    pre, out = "preprocessor_config.json", []
    crop = (image.get("crop_size") or {}).get("height")
    if crop is not None:
        out.append(Expected("tile", crop, f"{pre} crop_size.height"))
    if _size(image, "shortest_edge") is not None:
        out.append(Expected("tile", _size(image, "shortest_edge"), f"{pre} size.shortest_edge"))
    pins = image.get("image_grid_pinpoints")
    if isinstance(pins, list):  # transformers writes [height, width], a recipe [w, h]
        out.append(Expected("pinpoints", [[int(p[1]), int(p[0])] for p in pins],
                            f"{pre} image_grid_pinpoints (as [w, h])"))
    if proc.get("patch_size"):
        side = tile // int(proc["patch_size"])
        out.append(Expected("^image_tokens_per_tile", side * side,
                            "(tile / processor_config.json patch_size)^2"))
    return out


def _qwen2vl(image: dict, proc: dict, tile: int) -> list[Expected]:
    pre, out = "preprocessor_config.json", []
    low = image.get("min_pixels", _size(image, "shortest_edge", "min_pixels"))
    high = image.get("max_pixels", _size(image, "longest_edge", "max_pixels"))
    if low is not None:
        out.append(Expected("min_pixels", low, f"{pre} min_pixels / size.shortest_edge"))
    if high is not None:
        out.append(Expected("max_pixels", high, f"{pre} max_pixels / size.longest_edge"))
    patch, merge = image.get("patch_size"), image.get("merge_size")
    if patch and merge:
        out.append(Expected("patch", int(patch) * int(merge), f"{pre} patch_size x merge_size"))
    return out


def _internvl(image: dict, proc: dict, tile: int) -> list[Expected]:
    pre, out = "preprocessor_config.json", []
    side = _size(image, "height")
    if side is not None:
        out.append(Expected("tile", side, f"{pre} size.height"))
    for ours, theirs in (("min_tiles", "min_patches"), ("max_tiles", "max_patches")):
        if image.get(theirs) is not None:
            out.append(Expected(ours, image[theirs], f"{pre} {theirs}"))
    if proc.get("image_seq_length") is not None:
        out.append(Expected("^image_tokens_per_tile", proc["image_seq_length"],
                            "processor_config.json image_seq_length"))
    return out


CHECKS = {"idefics3": _idefics3, "llava-next": _llava_next, "qwen2vl": _qwen2vl,
          "internvl": _internvl}


def effective(policy, name: str):
    """The value a stage's image policy plans with: its own, else the preset default."""
    value = getattr(policy, name)
    if value is None:
        value = DEFAULTS[policy.preset].get(name)
    if name == "pinpoints" and value is not None:
        value = [list(p) for p in value]
    if name in ("mean", "std"):
        value = [float(v) for v in value]
    return value


def _same(ours, theirs) -> bool:
    if isinstance(ours, list) and ours and isinstance(ours[0], float):
        return len(ours) == len(theirs) and all(math.isclose(a, b, abs_tol=1e-6)
                                                for a, b in zip(ours, theirs))
    return ours == theirs


def check_recipe(recipe, folder: Path) -> None:
    """Raise RecipeError at the first setting of `recipe` that the folder's configs contradict."""
    image_config = read_json(folder, "preprocessor_config.json")
    proc = read_json(folder, "processor_config.json")
    if not image_config and not proc:
        return
    for name, stage in recipe.stages.items():
        policy = stage.image
        tile = effective(policy, "tile") or 0
        expected = CHECKS[recipe.family](image_config, proc, tile)
        if image_config:
            expected += _common(image_config, "preprocessor_config.json")
        for item in expected:
            if item.key.startswith("^"):
                key, ours = item.key[1:], getattr(recipe, item.key[1:])
            else:
                key, ours = f"stages.{name}.image.{item.key}", effective(policy, item.key)
            if not _same(ours, item.value):
                raise RecipeError(key, ours, f"{item.value!r}, as {folder}/{item.source} "
                                  f"says (set {key}: {json.dumps(item.value)})", file=recipe.file)
