"""Tiny randomly initialised HF models written with `save_pretrained` beside the dialect
fixtures' tokenizers and processors (nothing downloaded), and recipes that train them.

Each family's model folder is the dialect setup's folder (tokenizer, chat template,
processor configs) plus a model of that family whose vocabulary, image token ids, tile and
tokens per tile match the setup: 2 layers, hidden 32-64, float32. `composed_folders` writes
a vision tower and a causal LM apart, the LM's tokenizer without any image token.
"""
from __future__ import annotations

import torch
from dialect_fixtures import Setup, train_bpe, write_tokenizer
from dialect_shards import write_sources
from test_dialect_idefics3 import idefics3_setup, smolvlm_setup
from test_dialect_internvl import internvl_setup
from test_dialect_llava_next import llava_setup
from test_dialect_qwen2vl import qwen_setup
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Siglip2VisionConfig,
    Siglip2VisionModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # "Loading weights" bars would flood the test output
LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=2048)
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
KINDS = ("idefics3", "smolvlm", "llava-next", "qwen2vl", "qwen2.5vl", "internvl")


def _ids(setup: Setup) -> dict:
    tok = setup.tokenizer()
    return {"vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id, "bos_token_id": tok.bos_id,
            "eos_token_id": tok.eos_id}, tok


def _save(model, setup: Setup) -> Setup:
    model.save_pretrained(str(setup.folder))
    return setup


def idefics3_model(setup: Setup, *, smol: bool = False, seed: int = 0) -> Setup:
    ids, tok = _ids(setup)
    tile = setup.policy.tile
    vision = dict(TOWER, image_size=tile, patch_size=8)
    text = dict(LM, model_type="llama", **ids)
    torch.manual_seed(seed)
    if smol:
        config = SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=2,
                               image_token_id=tok.image_id, **_special(ids))
        return _save(SmolVLMForConditionalGeneration(config), setup)
    config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=2,
                            image_token_id=tok.image_id, **_special(ids))
    return _save(Idefics3ForConditionalGeneration(config), setup)


def _special(ids: dict) -> dict:
    return {k: ids[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id")
            if ids[k] is not None}


def llava_model(setup: Setup, *, patch: int = 16, strategy: str = "default",
                seed: int = 0) -> Setup:
    ids, tok = _ids(setup)
    tile = setup.policy.tile
    vision = dict(TOWER, model_type="clip_vision_model", image_size=tile, patch_size=patch)
    pins = [[h, w] for w, h in setup.policy.pinpoints]
    config = LlavaNextConfig(vision_config=vision, text_config=dict(LM, model_type="llama", **ids),
                             image_token_index=tok.image_id, image_grid_pinpoints=pins,
                             vision_feature_select_strategy=strategy, vision_feature_layer=-2,
                             image_seq_length=(tile // patch) ** 2)
    torch.manual_seed(seed)
    return _save(LlavaNextForConditionalGeneration(config), setup)


def qwen_model(setup: Setup, *, seed: int = 0) -> Setup:
    ids, tok = _ids(setup)
    vision = dict(depth=2, embed_dim=32, num_heads=2, hidden_size=LM["hidden_size"],
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2)
    text = dict(LM, **ids, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "mrope_section": [2, 3, 3]})
    config = Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=tok.image_id,
                           vision_start_token_id=tok.roles["vision_start"],
                           vision_end_token_id=tok.roles["vision_end"],
                           video_token_id=tok.hf.convert_tokens_to_ids("<|video_pad|>"))
    torch.manual_seed(seed)
    return _save(Qwen2VLForConditionalGeneration(config), setup)


def qwen25_model(setup: Setup, *, seed: int = 0) -> Setup:
    """Qwen2.5-VL: window attention in the tower (window 56 px, block 1 full), RMSNorm MLP."""
    ids, tok = _ids(setup)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                  out_hidden_size=LM["hidden_size"], patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
    text = dict(LM, **ids, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "mrope_section": [2, 3, 3]})
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text,
                              image_token_id=tok.image_id,
                              vision_start_token_id=tok.roles["vision_start"],
                              vision_end_token_id=tok.roles["vision_end"],
                              video_token_id=tok.hf.convert_tokens_to_ids("<|video_pad|>"))
    torch.manual_seed(seed)
    return _save(Qwen2_5_VLForConditionalGeneration(config), setup)


def internvl_model(setup: Setup, *, seed: int = 0) -> Setup:
    """InternVL: its own ViT (CLS token, dropped), pixel shuffle 0.5, a Qwen2 LM."""
    ids, tok = _ids(setup)
    tile = setup.policy.tile
    vision = dict(TOWER, image_size=[tile, tile], patch_size=[8, 8])
    config = InternVLConfig(vision_config=vision, text_config=dict(LM, model_type="qwen2", **ids),
                            image_token_id=tok.image_id, downsample_ratio=0.5,
                            image_seq_length=setup.tokens_per_tile)
    torch.manual_seed(seed)
    return _save(InternVLForConditionalGeneration(config), setup)


def model_setup(kind: str, folder) -> Setup:
    """A dialect setup of `kind` (KINDS) with its tiny model saved into the same folder."""
    if kind == "idefics3":
        return idefics3_model(idefics3_setup(folder))
    if kind == "smolvlm":
        return idefics3_model(smolvlm_setup(folder), smol=True)
    if kind == "llava-next":
        return llava_model(llava_setup(folder))
    if kind == "qwen2vl":
        return qwen_model(qwen_setup(folder))
    if kind == "internvl":
        return internvl_model(internvl_setup(folder))
    if kind == "qwen2.5vl":
        return qwen25_model(qwen_setup(folder, processor_class=Qwen2_5_VLProcessor))
    raise ValueError(kind)


# --- composed: a tower folder and an LM folder ----------------------------------------------

LM_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
               "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
               "{% else %}<image>{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tower_folder(folder, kind: str, *, tile: int = 32, patch: int = 8, seed: int = 0):
    """A vision tower saved alone (siglip, clip, siglip2) or inside a full SigLIP model
    (`siglip-full`, text tower and all, as checkpoints on the hub are)."""
    torch.manual_seed(seed)
    if kind == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**TOWER, image_size=tile, patch_size=patch))
    elif kind == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**TOWER, image_size=tile, patch_size=patch))
    elif kind == "siglip2":
        model = Siglip2VisionModel(Siglip2VisionConfig(**TOWER, patch_size=patch,
                                                       num_patches=(tile // patch) ** 2))
    elif kind == "siglip-full":
        model = SiglipModel(SiglipConfig(
            vision_config=dict(TOWER, image_size=tile, patch_size=patch),
            text_config=dict(TOWER, vocab_size=64, max_position_embeddings=16)))
    else:
        raise ValueError(kind)
    model.save_pretrained(str(folder))
    return folder


def lm_folder(folder, kind: str = "llama", *, seed: int = 0, vocab: int = 300):
    """A causal LM (llama: SmolLM2-style with tied embeddings; qwen2) with a GPT-2-style
    tokenizer and chat template, and no image token of any family."""
    write_tokenizer(folder, train_bpe(seed + 5, vocab),
                    specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                    tokenizer_class="GPT2Tokenizer", bos="<|im_start|>", eos="<|im_end|>",
                    pad="<|endoftext|>", template=LM_TEMPLATE)
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**LM, **ids, tie_word_embeddings=True))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**LM, **ids))
    model.save_pretrained(str(folder))
    return folder


COMPOSED_IMAGE = {"preset": "idefics3", "longest_edge": 96, "tile": 32, "encode": "png"}


# --- recipes -------------------------------------------------------------------------------

def train_recipe_for(root, *, tokenizer, image: dict, tokens_per_tile: int, model: dict,
                     stages=("pretrain", "sft"), steps: int = 6, seq_len: int = 512,
                     train_stages: dict | None = None, micro_batch: int = 2,
                     budget: int = 3000):
    """A recipe with the dialect sources (chat, captions, interleaved) under every stage,
    the given image settings, and `train:` for `model`."""
    from dialect_fixtures import image_bank

    from mixdata.recipe import parse_recipe

    sources = write_sources(root / "data", image_bank())
    # a token budget over repeated sources: enough packed sequences for a few steps
    stage_specs = {name: {"image": image, "max_epochs": 20, "budget": {"tokens": budget},
                          "mixture": {"chat": 1, "captions": 1, "interleaved": 1},
                          "pack": {"sequences_per_shard": 3}} for name in stages}
    train = {"model": model, "micro_batch": micro_batch, "checkpoint_every": 2, "stages": {
        name: {"budget": {"steps": steps}, "warmup": 1, "lr": 3e-3, "eval": {"vqa": False,
               "ocr": False, "caption": False}, **(train_stages or {}).get(name, {})}
        for name in stages}}
    raw = {"name": "hf-train", "seed": 5, "tokenizer": tokenizer, "seq_len": seq_len,
           "image_tokens_per_tile": tokens_per_tile, "sources": sources,
           "stages": stage_specs, "train": train}
    return parse_recipe(raw, file=str(root / "recipe.yaml"))


def setup_recipe(setup: Setup, root, **kwargs):
    return train_recipe_for(root, tokenizer=str(setup.folder), image=setup.image_settings(),
                            tokens_per_tile=setup.tokens_per_tile,
                            model={"hf": str(setup.folder)}, **kwargs)


def composed_setup(root, *, tower: str = "siglip", lm: str = "llama", seed: int = 0):
    """(Setup of the LM's folder in the idefics3 dialect, ComposedModelSpec fields): a tower
    and an LM folder under `root`; tile 32, patch 8, pixel shuffle 2 -> 4 tokens per tile."""
    from mixdata.image import ImagePolicy

    tower_dir = tower_folder(root / f"tower-{tower}", tower, seed=seed)
    lm_dir = lm_folder(root / f"lm-{lm}", lm, seed=seed)
    policy = ImagePolicy(preset="idefics3", longest_edge=96, tile=32, encode="png")
    setup = Setup("idefics3", lm_dir, None, policy, 4)
    return setup, {"vision": str(tower_dir), "lm": str(lm_dir)}


def built(setup: Setup, root, *, add_tokens: bool = False, seq_len: int = 512,
          budget: int = 3000):
    """One stage of the dialect sources built in `setup`'s dialect, repeated up to `budget`
    tokens (a few packed sequences); returns the shard folder."""
    from mixdata.building import build_stage

    tokenizer = {"path": str(setup.folder), "add_tokens": True} if add_tokens \
        else str(setup.folder)
    recipe = train_recipe_for(root, tokenizer=tokenizer, image=setup.image_settings(),
                              tokens_per_tile=setup.tokens_per_tile, model="tiny",
                              stages=("sft",), seq_len=seq_len, budget=budget)
    return build_stage(recipe, "sft", out=root / "out", progress=False)
