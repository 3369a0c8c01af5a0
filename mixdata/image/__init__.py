"""The image step: safe decoding, one aspect-aware resize, split plans and token layout.

- `plan` / `plan_for`: pure geometry of a preset for a width x height image (`ImagePlan`).
- `process`: bytes -> `ProcessedImage` (encoded at the plan's size), or `RecordRejected`.
- `layout` / `special_tokens`: the image's tokens in the text.
- `cut_tiles`: processed bytes + plan -> uint8 views for the loader.
- `probe`: (width, height, format) from the header only.
"""
from .decode import probe
from .placeholders import image_token_count, layout, special_tokens
from .planning import ImagePlan, ViewLimits, plan, plan_for, view_limits
from .policy import PRESETS, ImagePolicy
from .presets import DEFAULTS
from .processing import ProcessedImage, process
from .tiles import cut_tiles, tiles_from_image

__all__ = [
           "DEFAULTS",
           "PRESETS",
           "ImagePlan",
           "ImagePolicy",
           "ProcessedImage",
           "ViewLimits",
           "cut_tiles",
           "image_token_count",
           "layout",
           "plan",
           "plan_for",
           "probe",
           "process",
           "special_tokens",
           "tiles_from_image",
           "view_limits",
]
