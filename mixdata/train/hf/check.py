"""Shards against the model, before any step: a mismatch is a MixdataError saying what to
rebuild (or set).

`check_fit(dialect, config, ...)` compares a stage's dialect (the manifest's, or the one the
recipe would build, so a mismatch is caught before a build is wasted) with the model's
config: the dialect family, the tokenizer (its hash against the model folder's tokenizer),
the image token ids, the tile size and tokens per tile (idefics3 `image_seq_len`, the
composed connector's output, LLaVA-NeXT's patch grid, pinpoints and extra tokens), and
Qwen2-VL's patch unit. `fit_vocabulary` then makes sure every token id has an embedding.
"""
from __future__ import annotations

from ...errors import MixdataError
from .arch import arch_of, image_token_id, vision_facts

# config attributes holding a family role's token id, beside the image token
ROLE_IDS = {"qwen2vl": {"vision_start": "vision_start_token_id",
                        "vision_end": "vision_end_token_id"}}


def check_fit(dialect, config, *, where: str, rebuild: str,
              model_tokenizer_sha: str | None = None) -> None:
    """Raise MixdataError listing every way `dialect` and the model disagree; `rebuild` is
    the advice appended (which shards to rebuild and how)."""
    arch = arch_of(config)
    if dialect.family != arch.family:
        raise MixdataError(f"{where}: the shards are in the {dialect.family} dialect but the "
                           f"model ({arch.model_type}) reads {arch.family} batches; {rebuild}")
    problems = []
    if model_tokenizer_sha is not None and model_tokenizer_sha != dialect.tokenizer_sha256:
        problems.append(f"the shards were tokenized with {dialect.tokenizer} (sha256 "
                        f"{dialect.tokenizer_sha256[:12]}), not the model's own tokenizer "
                        f"({model_tokenizer_sha[:12]})")
    if dialect.image_id != image_token_id(config):
        problems.append(f"image token id {dialect.image_id} in the shards, "
                        f"{image_token_id(config)} in the model config")
    for role, attr in ROLE_IDS.get(arch.family, {}).items():
        want = getattr(config, attr, None)
        if want is not None and dialect.special_ids.get(role) != want:
            problems.append(f"{role} token id {dialect.special_ids.get(role)} in the shards, "
                            f"{want} in the model config ({attr})")
    problems += _geometry(dialect, config, arch)
    if problems:
        raise MixdataError(f"{where}: the shards do not fit the model: " + "; ".join(problems)
                           + f"; {rebuild}")


def _geometry(dialect, config, arch) -> list[str]:
    facts, geometry = vision_facts(config), dialect.geometry
    tile, tokens = geometry.get("tile"), dialect.tokens_per_tile
    if arch.family == "qwen2vl":
        if geometry.get("patch") != facts.unit:
            return [f"qwen2vl unit {geometry.get('patch')} px, the model's patch x merge is "
                    f"{facts.unit} (set image.patch: {facts.unit})"]
        return []
    if arch.model_type == "mixdata_vlm":
        if tile % facts.patch:
            return [f"tile {tile} px is not a multiple of the tower's {facts.patch} px patch"]
        made = config.connector_tokens(tile // facts.patch)
        return [] if made == tokens else [
            f"image_tokens_per_tile is {tokens}, the connector makes {made} from a {tile} px "
            f"tile (set image_tokens_per_tile: {made})"]
    out = []
    if tile != facts.tile:
        out.append(f"tile {tile} px, the vision tower reads {facts.tile} px "
                   f"(set image.tile: {facts.tile})")
    grid = facts.tile // facts.patch
    want = grid * grid if arch.family == "llava-next" else facts.tokens_per_view
    if tokens != want:
        out.append(f"image_tokens_per_tile is {tokens}, the model makes {want} per tile "
                   f"(set image_tokens_per_tile: {want})")
    if arch.family == "llava-next":
        out += _llava(geometry, config, facts)
    return out


def _llava(geometry: dict, config, facts) -> list[str]:
    out = []
    if geometry.get("patch_size") != facts.patch:
        out.append(f"patch size {geometry.get('patch_size')} in the shards, the tower's is "
                   f"{facts.patch} (processor_config.json patch_size)")
    extra = int(facts.has_cls) - int(config.vision_feature_select_strategy == "default")
    if geometry.get("extra_tokens") != extra:
        out.append(f"{geometry.get('extra_tokens')} extra image tokens per image in the shards, "
                   f"the model adds {extra} (vision_feature_select_strategy "
                   f"{config.vision_feature_select_strategy!r})")
    pins = {tuple(p) for p in geometry.get("pinpoints") or ()}          # [w, h]
    model_pins = {(w, h) for h, w in config.image_grid_pinpoints}        # [h, w]
    if pins != model_pins:
        out.append(f"pinpoints {sorted(pins)} (w, h) in the shards, the model's "
                   f"image_grid_pinpoints are {sorted(model_pins)}")
    return out


def fit_vocabulary(hf, dialect, *, where: str) -> bool:
    """Grow the embeddings when the dialect added tokens the model lacks (returns True);
    MixdataError when ids are missing without having been added."""
    rows = hf.get_input_embeddings().weight.shape[0]
    highest = max([dialect.vocab_size - 1, *dialect.special_ids.values()])
    if highest < rows:
        return False
    if not dialect.added_tokens:
        raise MixdataError(f"{where}: token id {highest} is beyond the model's {rows} "
                           "embeddings; the shards were built with another tokenizer than the "
                           "model's: rebuild them with the model's tokenizer folder")
    hf.resize_token_embeddings(dialect.vocab_size)
    return True
