"""`mixdata build`: a recipe stage into packed, weighted WebDataset shards and a manifest.

Phases, one module each: `prepare` (source units -> tokenised documents, cached), `plan`
(the exact mixture and the packing, from lengths alone), `write` (shards, atomically); then
`rejects` (the stage's rejects.jsonl, and the limits that stop a build), `accounts` (read =
written + rejected + unused) and `manifest`. `stage.build_stage` runs them; `pool` is the
process pool they share.
"""
from __future__ import annotations

from .stage import BuildOptions, build_stage, default_out

__all__ = ["BuildOptions", "build_stage", "default_out"]
