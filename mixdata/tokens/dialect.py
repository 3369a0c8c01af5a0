"""The dialect a stage's shards speak: what a consumer checks compatibility against.

`Dialect` is the manifest's `dialect` record: the family (`mixdata` for mixdata's own
tokens, else the model family), the tokenizer's and chat template's hashes, the special
token ids by role (pad, bos, eos, image and the family's tokens), tokens per tile, how the
loader finds each view's placeholders, the stage's effective image geometry and any tokens
mixdata added. A trainer can decide from it alone whether shards fit its model.

`recipe_tokenizer(recipe)` loads the tokenizer a recipe names, in its dialect;
`check_dialect(recipe)` checks a model folder's processor configs against the recipe.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import lru_cache

from ..image.presets import DEFAULTS
from .chat import family_params
from .families import FAMILY, max_grid
from .hf import ModelTokenizer, resolve_folder
from .loader import load_tokenizer as _load
from .procconfig import check_recipe
from .tokenizer import BOS, END, EOS, IMAGE, PAD, ROLE_TOKENS, Tokenizer

DIALECT_FORMAT = "mixdata-dialect-v1"
PLACEHOLDERS = ("views", "runs", "image")


@dataclass(frozen=True, kw_only=True)
class Dialect:
    """See the module docstring. `special_ids` / `special_tokens` map roles (pad, bos, eos,
    image, ...) to ids and texts; `placeholders` is `views` (one run of `tokens_per_tile`
    image tokens per view: the default collate), `runs` (one run per image holding its views
    in order) or `image` (one run per image, not split by view: a family collate's job)."""

    family: str
    tokenizer: str
    tokenizer_sha256: str
    chat_template_sha256: str | None
    vocab_size: int
    special_ids: dict[str, int]
    special_tokens: dict[str, str]
    tokens_per_tile: int
    placeholders: str
    geometry: dict = field(default_factory=dict)
    added_tokens: dict[str, int] = field(default_factory=dict)
    pad_is_eos: bool = False

    @property
    def pad_id(self) -> int:
        return self.special_ids["pad"]

    @property
    def image_id(self) -> int:
        return self.special_ids["image"]

    def to_json(self) -> dict:
        return {"format": DIALECT_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> Dialect:
        """Strict: ValueError naming what is missing, unknown or of the wrong format."""
        if not isinstance(data, dict) or data.get("format") != DIALECT_FORMAT:
            raise ValueError(f"dialect format is not {DIALECT_FORMAT!r}")
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls)
                    if f.default is MISSING and f.default_factory is MISSING}
        unknown, missing = sorted(set(data) - names - {"format"}), sorted(required - set(data))
        if unknown or missing:
            raise ValueError(f"dialect has unknown keys {unknown} / lacks {missing}")
        made = cls(**{k: v for k, v in data.items() if k in names})
        for role in ("pad", "image"):
            if not isinstance(made.special_ids.get(role), int):
                raise ValueError(f"dialect.special_ids lacks the {role} id")
        if made.placeholders not in PLACEHOLDERS:
            raise ValueError(f"dialect.placeholders is {made.placeholders!r}, expected one of "
                             f"{PLACEHOLDERS}")
        return made


def stage_geometry(policy) -> dict:
    """The preset and every parameter it plans with (the recipe's value, else the default)."""
    out = {"preset": policy.preset}
    for name, default in DEFAULTS[policy.preset].items():
        value = getattr(policy, name, None)
        value = default if value is None else value
        out[name] = [list(v) for v in value] if name == "pinpoints" else value
    out["mean"], out["std"] = list(policy.mean), list(policy.std)
    return out


def mixdata_dialect(tok: Tokenizer, tokens_per_tile: int, policy) -> Dialect:
    """mixdata's own dialect (`bytes` or a tokenizer.json), by role."""
    roles = {"pad": PAD, "bos": BOS, "eos": EOS, "image": IMAGE, "end_of_turn": END,
             **ROLE_TOKENS}
    return Dialect(family="mixdata", tokenizer=tok.identity, tokenizer_sha256=tok.sha256,
                   chat_template_sha256=None, vocab_size=tok.vocab_size,
                   special_ids={r: tok.special_id(t) for r, t in roles.items()},
                   special_tokens=roles, tokens_per_tile=tokens_per_tile,
                   placeholders="views", geometry=stage_geometry(policy))


def model_dialect(tok, tokens_per_tile: int, policy) -> Dialect:
    """A model folder's dialect (`tok` a `ModelTokenizer`) for one stage's image policy."""

    assert isinstance(tok, ModelTokenizer)
    geometry = stage_geometry(policy)
    if tok.family == "llava-next":
        params = family_params(tok, geometry["tile"], tokens_per_tile)
        geometry.update(patch_size=params["patch_size"], extra_tokens=params["extra_tokens"])
    texts = {"pad": tok.hf.convert_ids_to_tokens(tok.pad_id), **tok.spellings}
    for role in ("bos", "eos"):
        if role in tok.roles:
            texts[role] = tok.hf.convert_ids_to_tokens(tok.roles[role])
    return Dialect(family=tok.family, tokenizer=tok.identity, tokenizer_sha256=tok.sha256,
                   chat_template_sha256=tok.template_sha256, vocab_size=tok.vocab_size,
                   special_ids=dict(tok.roles), special_tokens=texts,
                   tokens_per_tile=tokens_per_tile,
                   placeholders=FAMILY[tok.family].placeholders, geometry=geometry,
                   added_tokens=dict(tok.added_tokens), pad_is_eos=tok.pad_is_eos)


def dialect_of(tok: Tokenizer, recipe, stage: str) -> Dialect:
    """The dialect of `stage`'s shards built with `tok` (from `recipe_tokenizer(recipe)`)."""
    policy = recipe.stages[stage].image
    if recipe.family is None:
        return mixdata_dialect(tok, recipe.image_tokens_per_tile, policy)
    return model_dialect(tok, recipe.image_tokens_per_tile, policy)


@lru_cache(maxsize=4)
def _cached(spec: str, family: str | None, add_tokens: bool, grid: int) -> Tokenizer:
    return _load(spec, family=family, add_tokens=add_tokens, grid=grid)


def recipe_tokenizer(recipe) -> Tokenizer:
    """The tokenizer `recipe` names, in its dialect (loaded once per process)."""
    if recipe.family is None:
        return _cached(recipe.tokenizer, None, False, 0)
    grid = max_grid([s.image for s in recipe.stages.values()])
    return _cached(recipe.tokenizer, recipe.family, recipe.add_tokens, grid)


def check_dialect(recipe, *, fetch: bool = True) -> str | None:
    """Check a model folder's processor configs against `recipe` (RecipeError on a mismatch).

    A remote folder is fetched (into the cache) only when `fetch`; otherwise it is left for
    the build, and the returned note says so. None when there was nothing to check or it held.
    """
    if recipe.family is None:
        return None

    if "://" in recipe.tokenizer and not fetch:
        return (f"tokenizer {recipe.tokenizer} is remote: its processor configs are checked "
                "when a stage is built")
    check_recipe(recipe, resolve_folder(recipe.tokenizer))
    return None
