"""Which stages a run trains, in which order, and what each one starts from.

A run's *chain* is the recipe's stages in order minus the ones skipped (`mixdata train
--skip highres`): each stage of the chain starts from the final weights of the stage before
it in the chain, so skipping highres makes SFT start from pretrain. The chain, the skipped
stages and each stage's seed (`--seed`, or `--stage-seed STAGE=N` for one stage) are written
to `run.json`; a run folder is never continued with another chain or seeds, because its later
stages would not follow from its earlier ones.

A stage's *lineage* is everything its weights depend on: the recipe (its hash), the chain up
to and including that stage and the seeds of those stages. Two runs whose lineage for a stage
agree train that stage identically, so `--reuse OTHER_RUN` copies it instead of training it
again (the demo's no-high-res ablation reuses the full run's pretrain stage; an SFT seed
sweep reuses pretrain and highres).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import MixdataError
from .checkpoint import FINAL

RUN_FILE = "run.json"


@dataclass(frozen=True)
class Chain:
    """The stages a run trains, in recipe order, and those it leaves out."""

    stages: tuple[str, ...]
    skipped: tuple[str, ...] = ()

    def before(self, name: str) -> str | None:
        """The stage `name` starts from: the one before it in the chain (None: the first)."""
        index = self.stages.index(name)
        return self.stages[index - 1] if index else None

    def lineage(self, name: str) -> tuple[str, ...]:
        return self.stages[: self.stages.index(name) + 1]

    def describe(self) -> str:
        """'pretrain -> sft (skipped: highres)'."""
        text = " -> ".join(self.stages)
        return text + (f" (skipped: {', '.join(self.skipped)})" if self.skipped else "")


def stage_chain(stages: list[str], skip: tuple[str, ...] | list[str] = (),
                recipe_name: str = "recipe") -> Chain:
    """The chain of a recipe with stages `stages` (in order) when `skip` is left out."""
    unknown = [s for s in skip if s not in stages]
    if unknown:
        raise MixdataError(f"--skip {unknown[0]!r}: recipe {recipe_name!r} has no such stage; "
                           f"stages: {', '.join(stages)}")
    kept = tuple(s for s in stages if s not in skip)
    if not kept:
        raise MixdataError(f"--skip leaves no stage of recipe {recipe_name!r} to train")
    return Chain(stages=kept, skipped=tuple(s for s in stages if s in skip))


def stages_to_train(chain: Chain, stage: str, recipe_name: str) -> list[str]:
    """Every stage of the chain, or only `stage` (which must be in it)."""
    if stage == "all":
        return list(chain.stages)
    if stage in chain.skipped:
        raise MixdataError(f"--stage {stage!r} is also given to --skip; drop one of them")
    if stage not in chain.stages:
        raise MixdataError(f"stage {stage!r} is not in recipe {recipe_name!r}; "
                           f"stages: {', '.join(chain.stages)}")
    return [stage]


def stage_seeds(chain: Chain, seed: int, overrides: dict[str, int] | None = None) -> dict[str, int]:
    """Each chain stage's seed: `seed`, or its entry in `overrides`."""
    overrides = overrides or {}
    unknown = [s for s in overrides if s not in chain.stages]
    if unknown:
        raise MixdataError(f"--stage-seed {unknown[0]}=...: the run trains no such stage; "
                           f"stages: {', '.join(chain.stages)}")
    return {s: overrides.get(s, seed) for s in chain.stages}


def saved_seeds(saved: dict, chain: Chain) -> dict[str, int]:
    """The seeds a run.json records (files without `seeds`: `seed` for every stage)."""
    return saved.get("seeds") or dict.fromkeys(chain.stages, saved.get("seed"))


def read_run_file(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise MixdataError(f"{path} is not valid JSON ({err}); it is not a training run "
                           "folder, or it was damaged") from None


def saved_chain(saved: dict, recipe_stages: list[str]) -> Chain:
    """The chain a run.json records (files from before --skip existed: every stage)."""
    return Chain(stages=tuple(saved.get("stages", recipe_stages)),
                 skipped=tuple(saved.get("skipped", ())))


def check_continuation(run_dir: Path, chain: Chain, seeds: dict[str, int],
                       recipe_sha256: str) -> None:
    """Refuse to add stages to a run folder trained with another chain, seeds or recipe."""
    saved = read_run_file(run_dir)
    if saved is None:
        return
    before = saved_chain(saved, list(chain.stages))
    found = {"stages": before.describe(), "seeds": saved_seeds(saved, before),
             "recipe": saved.get("recipe_sha256", recipe_sha256)}
    wanted = {"stages": chain.describe(), "seeds": seeds, "recipe": recipe_sha256}
    for key in found:
        if found[key] != wanted[key]:
            raise MixdataError(
                f"{run_dir} was trained with {key} {found[key]!r}, this run asks for "
                f"{wanted[key]!r}; use a new --out (or the same --skip/--seed/--stage-seed/recipe)")


def reusable(other: Path, name: str, chain: Chain, seeds: dict[str, int],
             recipe_sha256: str) -> Path | None:
    """`other/<name>/final.pt` when that run trained `name` with the same lineage."""
    saved = read_run_file(other)
    if saved is None:
        raise MixdataError(f"--reuse {other}: not a training run folder (no {RUN_FILE})")
    theirs = saved_chain(saved, list(chain.stages))
    if (saved.get("recipe_sha256") != recipe_sha256 or name not in theirs.stages
            or theirs.lineage(name) != chain.lineage(name)):
        return None
    their_seeds = saved_seeds(saved, theirs)
    if any(their_seeds.get(s) != seeds[s] for s in chain.lineage(name)):
        return None
    final = Path(other) / name / FINAL
    return final if final.exists() else None


def copy_stage(final: Path, run_dir: Path, name: str) -> Path:
    """Copy a reused stage's final weights into this run folder (atomically)."""
    target = Path(run_dir) / name / FINAL
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(final, tmp)
    tmp.replace(target)
    return target
