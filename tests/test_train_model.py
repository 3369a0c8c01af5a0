"""The VLM's invariants: packed documents are isolated, features land in their spans, presets
and connectors make the advertised number of tokens, LoRA starts as the identity."""
import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from mixdata.errors import MixdataError
from mixdata.image import ImagePolicy, layout, process
from mixdata.loading import normalize_pixels
from mixdata.loading.collate import BatchSpec
from mixdata.tokens import load_tokenizer
from mixdata.train.attention import dense_document_mask, flex_available
from mixdata.train.batch import Doc, make_batch
from mixdata.train.config import ModelSpec
from mixdata.train.connector import ConnectorConfig, build_connector
from mixdata.train.lm import LMConfig
from mixdata.train.lora import merge_lora, set_mode
from mixdata.train.model import (
    PRESETS,
    VLM,
    ModelConfig,
    check_tokens_per_tile,
    count_parameters,
    model_config,
)
from mixdata.train.vision import VisionConfig, VisionEncoder, sincos_positions

TOKENIZER = load_tokenizer("bytes")
PRESETS_TINY_VISION = PRESETS["tiny"].vision
IMAGE_ID, PAD_ID = TOKENIZER.image_id, TOKENIZER.pad_id
TILE, PER_TILE = 16, 4   # patch 4 -> 4x4 grid, pixel shuffle 2 -> 4 tokens per tile
POLICY = ImagePolicy(preset="none", max_side=TILE)   # one 16 px view per image


def tiny_config(kind="pixel_shuffle", attention="sdpa") -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(patch=4, base_tile=TILE, dim=32, layers=2, heads=2),
        connector=ConnectorConfig(kind=kind, shuffle=2, latents=PER_TILE, layers=1, heads=2),
        lm=LMConfig(dim=32, layers=2, heads=2, ffn=64, vocab_size=TOKENIZER.vocab_size),
        attention=attention)


def random_image(rng):
    pixels = rng.integers(0, 256, size=(int(rng.integers(8, 40)), int(rng.integers(8, 40)), 3),
                          dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return process(out.getvalue(), POLICY)


def image_ids(plan):
    return [10 if s == "\n" else TOKENIZER.special_id(s) for s in layout(plan, PER_TILE)]


def make_doc(rng, length, images=0) -> Doc:
    """`length` random text tokens with `images` real processed images after the second."""
    ids = rng.integers(1, 256, size=length).tolist()
    placed, at = [], 2
    for _ in range(images):
        processed = random_image(rng)
        span = image_ids(processed.plan)
        ids[at:at] = span
        placed.append((processed, at, at + len(span)))
        at += len(span)
    loss = (rng.random(len(ids)) < 0.7).astype(np.uint8)
    return Doc(ids=np.asarray(ids), loss=loss, images=tuple(placed))


SPEC = BatchSpec(seq_len=512, pad_id=PAD_ID, image_id=IMAGE_ID, tokens_per_tile=PER_TILE,
                 tile=TILE, mean=POLICY.mean, std=POLICY.std)


def forward(model, batch):
    pixels = normalize_pixels(batch["pixel_values"], POLICY.mean, POLICY.std)
    return model(batch["input_ids"], batch["position_ids"], batch["doc_ids"], pixels,
                 batch["tile_spans"])


def collate_rows(rows, length=None):
    return make_batch(rows, SPEC, length=length)


@pytest.mark.parametrize("kind", ["pixel_shuffle", "perceiver"])
def test_packed_logits_equal_each_document_alone(kind):
    torch.manual_seed(0)
    model = VLM(tiny_config(kind)).eval()
    rng = np.random.default_rng(1)
    docs = [make_doc(rng, 11, images=1), make_doc(rng, 7), make_doc(rng, 13, images=2)]
    real = sum(len(d.ids) for d in docs)
    packed = collate_rows([docs], length=real + 5)
    with torch.no_grad():
        packed_logits = forward(model, packed)[0]
        offset = 0
        for doc in docs:
            alone = forward(model, collate_rows([[doc]]))[0]
            n = len(doc.ids)
            torch.testing.assert_close(packed_logits[offset:offset + n], alone, atol=1e-5, rtol=1e-5)
            offset += n
    assert torch.isfinite(packed_logits).all()  # padding rows of the mask are never empty


def test_mask_never_crosses_documents():
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, -1]])
    mask = dense_document_mask(doc_ids)[0, 0]
    assert mask[3].tolist() == [False, False, True, True, False, False]
    assert mask[5].tolist() == [False] * 5 + [True]
    assert not mask.triu(1).any()


@pytest.mark.skipif(not flex_available(), reason="this torch has no flex attention")
def test_flex_attention_matches_masked_sdpa():
    torch.manual_seed(0)
    sdpa_model = VLM(tiny_config(attention="sdpa")).eval()
    flex_model = VLM(tiny_config(attention="flex")).eval()
    flex_model.load_state_dict(sdpa_model.state_dict())
    rng = np.random.default_rng(2)
    batch = collate_rows([[make_doc(rng, 9, 1), make_doc(rng, 12)], [make_doc(rng, 20, 1)]], length=64)
    with torch.no_grad():
        torch.testing.assert_close(forward(flex_model, batch), forward(sdpa_model, batch),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not flex_available(), reason="this torch has no flex attention")
def test_flex_refuses_to_train_on_cpu_with_a_clear_error():
    model = VLM(tiny_config(attention="flex")).train()
    batch = collate_rows([[make_doc(np.random.default_rng(7), 12)]])
    with pytest.raises(RuntimeError, match="no backward pass on CPU"):
        forward(model, batch)


def test_features_are_scattered_into_their_spans():
    torch.manual_seed(0)
    model = VLM(tiny_config()).eval()
    rng = np.random.default_rng(3)
    doc = make_doc(rng, 12, images=1)
    batch = collate_rows([[doc]])
    changed = dict(batch, pixel_values=255 - batch["pixel_values"])
    with torch.no_grad():
        a, b = forward(model, batch)[0], forward(model, changed)[0]
    differs = (a - b).abs().amax(-1) > 1e-6
    _, start, end = doc.images[0]
    placeholders = np.flatnonzero(doc.ids == IMAGE_ID)
    # causal: tokens before the first placeholder are untouched, it and all after change
    assert not differs[:placeholders[0]].any() and differs[placeholders[0]:].all()
    assert start < placeholders[0] and placeholders[-1] < end


def test_presets_make_the_advertised_tokens_and_sizes():
    tiny = model_config(ModelSpec(preset="tiny"), vocab_size=300)
    assert tiny.tokens_per_tile(64) == 16
    assert 2e6 < count_parameters(VLM(tiny)) < 8e6
    assert model_config(ModelSpec(preset="small"), 300).tokens_per_tile(224) == 64
    assert model_config(ModelSpec(preset="base"), 300).tokens_per_tile(378) == 81
    perceiver = model_config(ModelSpec(preset="tiny", connector="perceiver", perceiver_latents=9), 300)
    assert perceiver.tokens_per_tile(64) == perceiver.tokens_per_tile(128) == 9
    mlp = model_config(ModelSpec(preset="tiny", connector="mlp"), 300)
    assert mlp.tokens_per_tile(64) == 4 * tiny.tokens_per_tile(64)  # tiny shuffles by 2
    connector = build_connector(mlp.connector, 24, 40)
    assert connector(torch.randn(3, 64, 24)).shape == (3, 64, 40)  # a token per patch


def test_token_mismatch_names_both_numbers():
    config = model_config(ModelSpec(preset="tiny"), 300)
    with pytest.raises(MixdataError, match=r"image_tokens_per_tile is 81.*makes 16 tokens"):
        check_tokens_per_tile(config, 64, 81, "stage pretrain")
    with pytest.raises(MixdataError, match="not a multiple"):
        check_tokens_per_tile(config, 60, 16, "stage pretrain")


def test_position_embeddings_interpolate_to_other_tiles():
    torch.manual_seed(0)
    model = VLM(tiny_config()).eval()
    with torch.no_grad():
        assert model.vision(torch.zeros(2, 3, 24, 24)).shape == (2, 36, 32)
        assert torch.equal(model.vision.position_embeddings(4), model.vision.pos_embed)
        # a 6x6 grid is a pixel-shuffle-able larger tile: 9 tokens per tile
        assert model.image_features(torch.zeros(1, 3, 24, 24)).shape == (1, 9, 32)


def test_fixed_positions_code_each_patch_smoothly_at_unit_amplitude():
    code = sincos_positions(8, 32, 8)[0].reshape(8, 8, 32)
    assert code.shape == (8, 8, 32) and float(code.abs().max()) <= 1.0
    rows, cols = code[..., :16], code[..., 16:]
    assert torch.equal(rows[:, 0], rows[:, 5]) and torch.equal(cols[0], cols[5])  # separable
    flat = code.reshape(64, 32)
    distances = torch.cdist(flat, flat) + torch.eye(64) * 1e9
    assert bool((distances > 1e-3).all())   # every patch has its own code
    nearest = distances.argmin(1)           # ... and the closest code is a grid neighbour
    steps = (nearest // 8 - torch.arange(64) // 8).abs() + (nearest % 8 - torch.arange(64) % 8).abs()
    assert int(steps.max()) == 1
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions(8, 30, 8)


def test_fixed_position_scale_adds_to_the_learned_table_and_reaches_the_config():
    config = VisionConfig(patch=4, base_tile=TILE, dim=32, layers=1, heads=2)
    torch.manual_seed(0)
    plain = VisionEncoder(config)
    torch.manual_seed(0)
    fixed = VisionEncoder(dataclasses.replace(config, fixed_position=0.5))
    with torch.no_grad():
        assert torch.equal(plain.position_embeddings(4), plain.pos_embed)
        added = fixed.position_embeddings(4) - plain.position_embeddings(4)
        assert torch.allclose(added, 0.5 * sincos_positions(4, 32, 4))
        pixels = torch.randn(1, 3, TILE, TILE)
        assert not torch.allclose(plain(pixels), fixed(pixels))
    spec = ModelSpec(preset="tiny", vision_position=0.25)
    assert model_config(spec, 300).vision.fixed_position == 0.25
    assert model_config(ModelSpec(preset="tiny"), 300).vision == PRESETS_TINY_VISION


def test_batch_without_images_still_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    model = VLM(tiny_config()).train()
    batch = collate_rows([[make_doc(np.random.default_rng(4), 10)]])
    forward(model, batch).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_lora_starts_as_identity_and_merges_exactly():
    torch.manual_seed(0)
    model = VLM(tiny_config()).eval()
    batch = collate_rows([[make_doc(np.random.default_rng(5), 14, images=1)]])
    with torch.no_grad():
        before = forward(model, batch)
    set_mode(model.lm, "lora", rank=4, alpha=8, seed=0, skip=(model.lm.head,))
    trainable = [n for n, p in model.lm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(forward(model, batch), before)
        for name, param in model.lm.named_parameters():
            if name.endswith("lora_b"):
                param.add_(0.05)
        adapted = forward(model, batch)
        assert not torch.allclose(adapted, before)
        assert merge_lora(model.lm) == 2 * (4 + 3)
        torch.testing.assert_close(forward(model, batch), adapted, atol=1e-5, rtol=1e-5)


def test_span_width_mismatch_is_an_error():
    torch.manual_seed(0)
    config = tiny_config()
    model = VLM(dataclasses.replace(config, connector=dataclasses.replace(config.connector, shuffle=1)))
    batch = collate_rows([[make_doc(np.random.default_rng(6), 12, images=1)]])
    with pytest.raises(MixdataError, match="makes 16 tokens per tile"):
        forward(model.eval(), batch)


def test_lm_overrides_resize_the_language_model_and_name_a_bad_width():
    spec = ModelSpec(preset="tiny", lm_dim=192, lm_layers=3, lm_ffn=512)
    config = model_config(spec, 300)
    assert (config.lm.dim, config.lm.layers, config.lm.ffn) == (192, 3, 512)
    assert config.vision == model_config(ModelSpec(preset="tiny"), 300).vision
    model = VLM(config)
    assert len(model.lm.blocks) == 3 and model.lm.embed.weight.shape == (300, 192)
    assert spec.label == "tiny (lm_dim 192, lm_layers 3, lm_ffn 512)"
