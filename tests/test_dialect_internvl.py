"""The internvl dialect against transformers' InternVLProcessor with GotOcr2's image processor.

InternVL's HF chat template (`<IMG_CONTEXT>` per image, which the processor expands to
`<img>` + image_seq_length x views `<IMG_CONTEXT>` + `</img>`), a Qwen2 tokenizer with the
start/end/context image tokens as its extra special tokens, and the processor without its
video processor (which needs torchvision). The default collate splits each image's run of
placeholders into its views, so the built shards load as they are.
"""
from __future__ import annotations

import numpy as np
import pytest
from dialect_fixtures import (
    CONVERSATIONS,
    Setup,
    auto_tokenizer,
    image_bank,
    image_only,
    mixdata_docs,
    pil,
    plain_samples,
    png,
    random_conversation,
    random_sizes,
    reference_chat,
    reference_plain,
    sft_sample,
    train_bpe,
    write_processor_configs,
    write_tokenizer,
)
from dialect_shards import check_built
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GotOcr2ImageProcessorPil, InternVLProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from mixdata.image import ImagePolicy, plan

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BODY = ("{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
        "{{ '<IMG_CONTEXT>\\n' }}{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
        "{% endif %}")
# the chat template of the OpenGVLab/InternVL3-*-hf conversions
TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}" + BODY
            + "{{'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}"
            "{{'<|im_start|>assistant\\n' }}{% endif %}")
MARKED = TEMPLATE.replace(BODY + "{{'<|im_end|>\\n'}}", (
    "{% if message['role'] == 'assistant' %}{% generation %}" + BODY + "{{'<|im_end|>'}}"
    "{% endgeneration %}{{'\\n'}}{% else %}" + BODY + "{{'<|im_end|>\\n'}}{% endif %}"))
EXTRA = {"start_image_token": "<img>", "end_image_token": "</img>",
         "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}


def internvl_setup(folder, *, tile=32, min_tiles=1, max_tiles=6, seq_len=4, vocab=400,
                   seed=3) -> Setup:
    write_tokenizer(folder, train_bpe(seed, vocab),
                    specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>", *EXTRA.values()],
                    tokenizer_class="Qwen2Tokenizer", eos="<|im_end|>", pad="<|endoftext|>",
                    extra=EXTRA, template=TEMPLATE)
    images = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True,
                                      min_patches=min_tiles, max_patches=max_tiles)
    write_processor_configs(folder, images, {"processor_class": "InternVLProcessor",
                                             "image_seq_length": seq_len})
    processor = image_only(InternVLProcessor)(images, auto_tokenizer(folder), None,
                                              image_seq_length=seq_len, chat_template=TEMPLATE)
    policy = ImagePolicy(preset="internvl", tile=tile, min_tiles=min_tiles, max_tiles=max_tiles,
                         mean=CLIP_MEAN, std=CLIP_STD, encode="png")
    return Setup("internvl", folder, processor, policy, seq_len, MARKED)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return internvl_setup(tmp_path_factory.mktemp("internvl"))


@pytest.fixture(scope="module")
def images():
    return image_bank()


SIZES = [(1, 1), (5, 90), (20, 16), (31, 33), (32, 32), (33, 32), (64, 64), (100, 60),
         (40, 120), (150, 40), (97, 95), (300, 7), (250, 250), (64, 31), (1000, 999),
         (48, 32), (32, 48), (96, 32)]


@pytest.mark.parametrize("low,high", [(1, 6), (1, 12), (2, 9), (1, 1)])
def test_patches_are_the_image_processors(low, high):
    """The number of patches (tiles + thumbnail) of each size, as GotOcr2's processor cuts."""
    hf = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=True,
                                  min_patches=low, max_patches=high)
    for width, height in SIZES:
        p = plan(width, height, "internvl", tile=32, min_tiles=low, max_tiles=high)
        out = hf(images=[pil(png((width, height), 0))], return_tensors="np")
        assert out["num_patches"][0] == p.num_views, (width, height)
        assert out["pixel_values"].shape[1:] == (3, 32, 32)


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 6000), st.integers(1, 6000), st.sampled_from([448, 32, 40]),
       st.sampled_from([(1, 12), (1, 6), (2, 9), (4, 4), (1, 1)]))
def test_grid_is_get_optimal_tiled_canvas(width, height, tile, bounds):
    low, high = bounds
    p = plan(width, height, "internvl", tile=tile, min_tiles=low, max_tiles=high)
    cols, rows = get_optimal_tiled_canvas((height, width), (tile, tile), low, high)
    assert (p.cols, p.rows) == (cols, rows) or (p.num_views == 1 and cols * rows == 1)


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_chat_ids_and_mask_equal_the_processors(setup, images, index):
    conversation = CONVERSATIONS[index]
    doc, = mixdata_docs(setup, sft_sample(conversation, images))
    ids, mask = reference_chat(setup, conversation, images)
    assert doc.ids.tolist() == ids
    assert doc.loss.tolist() == mask
    tok = setup.tokenizer()
    for slot in doc.images:
        body = doc.ids[slot.start:slot.start + slot.length]
        assert body[0] == tok.roles["start_image"] and body[-1] == tok.roles["end_image"]
        assert (body[1:-1] == tok.image_id).sum() == slot.views * setup.tokens_per_tile


def test_plain_documents_equal_the_processor_call(setup, images):
    for sample in plain_samples(images):
        doc, = mixdata_docs(setup, sample)
        assert doc.ids.tolist() == reference_plain(setup, sample), sample.kind


def test_built_shards_keep_the_ids_and_load_with_the_default_collate(setup, tmp_path):
    assert check_built(setup, tmp_path) >= len(CONVERSATIONS)
    from mixdata import load

    tok, views = setup.tokenizer(), 0
    for batch in load(tmp_path / "out", batch_size=1, shuffle_buffer=0, epochs=1):
        spans = batch["tile_spans"].numpy()
        assert len(spans) == batch["pixel_values"].shape[0]
        ids = batch["input_ids"][0].numpy()
        for _, start, end in spans:
            assert end - start == setup.tokens_per_tile
            assert (ids[start:end] == tok.image_id).all()
        # every placeholder of the row is in exactly one view's span
        covered = np.zeros(len(ids), int)
        for _, start, end in spans:
            covered[start:end] += 1
        assert (covered == (ids == tok.image_id)).all()
        views += len(spans)
    assert views > 0


@pytest.mark.parametrize("seed", range(2))
def test_held_out_internvl_processor(tmp_path_factory, seed):
    """Other vocabulary, tile 40, 2..9 tiles, 9 placeholders per tile; random conversations
    over random image sizes."""
    held = internvl_setup(tmp_path_factory.mktemp("internvl-held"), tile=40, min_tiles=2,
                          max_tiles=9, seq_len=9, vocab=470, seed=41 + seed)
    rng = np.random.default_rng(300 + seed)
    images = [png(size, i) for i, size in enumerate(random_sizes(rng, 4, 40))]
    tok = held.tokenizer()
    for _ in range(4):
        conversation = random_conversation(rng, len(images))
        doc, = mixdata_docs(held, sft_sample(conversation, images), tokenizer=tok)
        ids, mask = reference_chat(held, conversation, images)
        assert doc.ids.tolist() == ids
        assert doc.loss.tolist() == mask
    for sample in plain_samples(images + image_bank()):
        doc, = mixdata_docs(held, sample, tokenizer=tok)
        assert doc.ids.tolist() == reference_plain(held, sample)
