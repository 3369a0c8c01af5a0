"""Where an image's tokens go in the text: markers, placeholders and newlines per family.

Every view is its marker followed by its placeholders, in the order `cut_tiles` returns the
views. Tiles are marked `<row_R_col_C>` (1-based) and each row of tiles ends with "\\n"; the
global view, and the one view of an untiled image, is marked `<global-img>`.

- idefics3 follows Idefics3's processor: each view opens with `<fake_token_around_image>`,
  rows end with "\\n", then "\\n" before the global view, and one closing fake token.
- Every other family is wrapped in `<img>` ... `</img>`. Their reference prompts carry no
  per-tile markers (InternVL, LLaVA-NeXT, Qwen2-VL put only placeholders there); mixdata adds
  them so every view can be found in the token stream.
- qwen2vl has one view with (h / 28) * (w / 28) placeholders (`plan.view_tokens`), whatever
  tokens_per_tile says.
"""
from __future__ import annotations

from .planning import ImagePlan

IMAGE = "<image>"
GLOBAL = "<global-img>"
OPEN, CLOSE = "<img>", "</img>"
AROUND = "<fake_token_around_image>"
NEWLINE = "\n"
MAX_GRID = 16  # row/column markers exist for grids up to this many rows and columns


def tile_marker(row: int, col: int) -> str:
    """1-based row and column, as Idefics3 writes them."""
    return f"<row_{row}_col_{col}>"


def special_tokens() -> list[str]:
    """Every special name `layout` can emit (the literal "\\n" is text, not special)."""
    markers = [tile_marker(r, c) for r in range(1, MAX_GRID + 1) for c in range(1, MAX_GRID + 1)]
    return [IMAGE, GLOBAL, OPEN, CLOSE, AROUND, *markers]


def tokens_per_view(plan: ImagePlan, tokens_per_tile: int) -> int:
    return plan.view_tokens if plan.view_tokens is not None else tokens_per_tile


def image_token_count(plan: ImagePlan, tokens_per_tile: int) -> int:
    """How many `<image>` placeholders the layout holds: what packing counts."""
    return plan.num_views * tokens_per_view(plan, tokens_per_tile)


def _tile_rows(plan: ImagePlan, placeholders: list[str], prefix: list[str]) -> list[str]:
    out: list[str] = []
    for row in range(1, plan.rows + 1):
        for col in range(1, plan.cols + 1):
            out += [*prefix, tile_marker(row, col), *placeholders]
        out.append(NEWLINE)
    return out


def _idefics3(plan: ImagePlan, placeholders: list[str]) -> list[str]:
    closing = [AROUND, GLOBAL, *placeholders, AROUND]
    if plan.num_views == 1:
        return closing
    return [*_tile_rows(plan, placeholders, [AROUND]), NEWLINE, *closing]


def _wrapped(plan: ImagePlan, placeholders: list[str]) -> list[str]:
    if plan.num_views == 1:
        return [OPEN, GLOBAL, *placeholders, CLOSE]
    tiles = _tile_rows(plan, placeholders, [])
    overview = [GLOBAL, *placeholders] if plan.global_view != "none" else []
    body = overview + tiles if plan.global_view == "before" else tiles + overview
    return [OPEN, *body, CLOSE]


def layout(plan: ImagePlan, tokens_per_tile: int) -> list[str]:
    """The image's symbols: names from `special_tokens()` and the literal "\\n"."""
    if tokens_per_tile <= 0:
        raise ValueError(f"tokens_per_tile must be positive, got {tokens_per_tile}")
    if plan.rows > MAX_GRID or plan.cols > MAX_GRID:
        raise ValueError(f"a {plan.rows}x{plan.cols} grid is beyond the {MAX_GRID}x{MAX_GRID} "
                         "row/column markers; lower max_tiles or raise the tile size")
    placeholders = [IMAGE] * tokens_per_view(plan, tokens_per_tile)
    if plan.preset == "idefics3":
        return _idefics3(plan, placeholders)
    return _wrapped(plan, placeholders)
