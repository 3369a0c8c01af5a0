"""The four model families' image tokens, as their transformers processors write them (pure).

A family names the tokens its processor uses, by role, each with the processor's default
spelling and the tokenizer attribute that overrides it (transformers reads e.g.
`tokenizer.image_token` when a tokenizer config defines it). `expand` is the processor's
`replace_image_token`: the text that stands for one image after expansion, computed from
mixdata's `ImagePlan` instead of from the processed pixels.

- idefics3 (Idefics3Processor, SmolVLMProcessor): per tile `<fake_token_around_image>
  <row_r_col_c>` + `<image>` x image_seq_len, "\\n" after each row of tiles, then "\\n" and the
  global view `<fake_token_around_image><global-img>` + `<image>` x N + `<fake_token_around_image>`.
  An image that is not split is only the global-view part.
- llava-next (LlavaNextProcessor): `<image>` x (unpadded features + one newline per feature
  row + base features), counted from the original image size.
- qwen2vl (Qwen2VLProcessor): `<|image_pad|>` x (h / 28) * (w / 28); the chat template (or,
  in plain documents, mixdata) wraps it in `<|vision_start|>` ... `<|vision_end|>`.
- internvl (InternVLProcessor): `<img>` + `<IMG_CONTEXT>` x (image_seq_length * views) + `</img>`.

`placeholders` says how the loader finds each view's placeholders: `views` (one run of
image tokens per view, the default collate's contract), `runs` (one run per image holding
its views one after the other), or `image` (one run per image that is not split by view).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..image import ImagePlan
from ..image.presets import DEFAULTS, IDEFICS3_MAX_SIDE

FAMILIES: tuple[str, ...] = ("idefics3", "llava-next", "qwen2vl", "internvl")
# processor classes (processor_config.json "processor_class") of each family
PROCESSOR_CLASSES: dict[str, str] = {
    "Idefics3Processor": "idefics3", "SmolVLMProcessor": "idefics3",
    "LlavaNextProcessor": "llava-next",
    "Qwen2VLProcessor": "qwen2vl", "Qwen2_5_VLProcessor": "qwen2vl",
    "InternVLProcessor": "internvl",
}


@dataclass(frozen=True)
class Family:
    """One family's roles -> (default spelling, tokenizer attribute that overrides it)."""

    name: str
    roles: dict[str, tuple[str, str]]
    placeholders: str                      # views | runs | image
    plain_wrap: tuple[str, str] = ("", "")  # roles written around the placeholder in plain docs

    def spellings(self, tokenizer_attrs) -> dict[str, str]:
        """Role -> token text, taking the tokenizer's own attribute where it has one."""
        out = {}
        for role, (default, attr) in self.roles.items():
            value = getattr(tokenizer_attrs, attr, None) if attr else None
            out[role] = value if isinstance(value, str) and value else default
        return out


FAMILY = {
    "idefics3": Family("idefics3", {
        "image": ("<image>", "image_token"),
        "fake_image": ("<fake_token_around_image>", "fake_image_token"),
        "global_image": ("<global-img>", "global_image_token"),
        "end_of_utterance": ("<end_of_utterance>", "end_of_utterance_token"),
    }, placeholders="views"),
    "llava-next": Family("llava-next", {"image": ("<image>", "image_token")},
                         placeholders="image"),
    "qwen2vl": Family("qwen2vl", {
        "image": ("<|image_pad|>", "image_token"),
        "vision_start": ("<|vision_start|>", "vision_start_token"),
        "vision_end": ("<|vision_end|>", "vision_end_token"),
    }, placeholders="image", plain_wrap=("vision_start", "vision_end")),
    "internvl": Family("internvl", {
        "image": ("<IMG_CONTEXT>", "context_image_token"),
        "start_image": ("<img>", "start_image_token"),
        "end_image": ("</img>", "end_image_token"),
    }, placeholders="runs"),
}


def tile_marker(row: int, col: int) -> str:
    return f"<row_{row}_col_{col}>"


def max_grid(policies) -> int:
    """The most rows or columns an idefics3 plan of these stage image policies can have."""
    grids = [0]
    for policy in policies:
        if policy.preset == "idefics3":
            longest = policy.longest_edge or DEFAULTS["idefics3"]["longest_edge"]
            tile = policy.tile or DEFAULTS["idefics3"]["tile"]
            grids.append(math.ceil(min(longest, IDEFICS3_MAX_SIDE) / tile))
    return max(grids)


def required_tokens(family: str, spellings: dict[str, str], grid: int = 0) -> list[str]:
    """Every token text the family's layouts write; idefics3 tile markers for grids of up to
    `grid` rows and columns (see `max_grid`)."""
    needed = list(spellings.values())
    if family == "idefics3":
        needed += [tile_marker(r, c) for r in range(1, grid + 1) for c in range(1, grid + 1)]
    return needed


def plain_wrap(family: str, spellings: dict[str, str]) -> tuple[str, str]:
    """What a plain (non-chat) document writes before and after one image's placeholder."""
    before, after = FAMILY[family].plain_wrap
    return (spellings[before] if before else ""), (spellings[after] if after else "")


def plain_placeholder(family: str, spellings: dict[str, str]) -> str:
    """What a plain document writes for one image, before expansion (what a caller gives
    `processor(text=...)` for it)."""
    before, after = plain_wrap(family, spellings)
    return before + spellings["image"] + after


def _idefics3(plan: ImagePlan, tok: dict[str, str], seq_len: int) -> str:
    image, fake, glob = tok["image"], tok["fake_image"], tok["global_image"]
    closing = f"{fake}{glob}{image * seq_len}{fake}"
    if plan.num_views == 1:
        return closing
    rows = "".join("".join(f"{fake}{tile_marker(r, c)}{image * seq_len}"
                           for c in range(1, plan.cols + 1)) + "\n"
                   for r in range(1, plan.rows + 1))
    return rows + "\n" + closing


def llava_next_count(plan: ImagePlan, patch_size: int, extra_tokens: int) -> int:
    """LlavaNextProcessor's `<image>` count for one image (see `_get_number_of_features`).

    `extra_tokens` is num_additional_image_tokens, less one for the "default" feature select
    strategy (which drops the CLS token).
    """
    if plan.source_size is None:
        raise ValueError("a llava-next plan needs its source_size")
    width, height = plan.source_size
    pin_w, pin_h = plan.canvas_size
    side = plan.tile // patch_size                      # patches per tile side
    cur_h, cur_w = side * (pin_h // plan.tile), side * (pin_w // plan.tile)
    if width / height > cur_w / cur_h:
        new_height = int(round(height * (cur_w / width), 7))
        cur_h -= (cur_h - new_height) // 2 * 2
    else:
        new_width = int(round(width * (cur_h / height), 7))
        cur_w -= (cur_w - new_width) // 2 * 2
    return cur_h * cur_w + cur_h + side * side + extra_tokens


def expand(family: str, plan: ImagePlan, spellings: dict[str, str], params: dict) -> str:
    """The processor's replacement text for one image of this plan.

    `params`: `image_seq_len` (idefics3, internvl: placeholders per view), and for llava-next
    `patch_size` and `extra_tokens` (see `llava_next_count`).
    """
    if plan.preset != family:
        raise ValueError(f"a {plan.preset} plan cannot be laid out in the {family} dialect")
    image = spellings["image"]
    if family == "idefics3":
        return _idefics3(plan, spellings, params["image_seq_len"])
    if family == "llava-next":
        return image * llava_next_count(plan, params["patch_size"], params["extra_tokens"])
    if family == "qwen2vl":
        return image * int(plan.view_tokens)
    views = plan.num_views * params["image_seq_len"]
    return f"{spellings['start_image']}{image * views}{spellings['end_image']}"


def image_tokens(family: str, plan: ImagePlan, params: dict) -> int:
    """How many image placeholder tokens `expand` writes (what the model fills)."""
    if family == "llava-next":
        return llava_next_count(plan, params["patch_size"], params["extra_tokens"])
    if family == "qwen2vl":
        return int(plan.view_tokens)
    return plan.num_views * params["image_seq_len"]
