"""The qwen2vl dialect against transformers' Qwen2VLProcessor (and, held out, Qwen2.5-VL's).

Qwen2's tokenizer class (which rebuilds its own pre-tokenizer), no BOS, the Qwen2-VL chat
template with its default system message; the processors without their video processors,
which need torchvision. Also where source text spells control tokens: mixdata's ids equal
`apply_chat_template(..., sanitize_control_tokens=True)`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from dialect_fixtures import (
    CONVERSATIONS,
    Setup,
    auto_tokenizer,
    generation_variant,
    hf_messages,
    image_bank,
    image_only,
    img,
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
    txt,
    write_processor_configs,
    write_tokenizer,
)
from dialect_shards import check_built
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from mixdata.errors import MixdataError
from mixdata.image import ImagePolicy, plan

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOOP = ("{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
        "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}"
        "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|>"
        "<|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
        "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
        "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}")
# Qwen/Qwen2-VL-7B-Instruct's chat template (Qwen2.5-VL's is the same)
TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>"
    "{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}" + LOOP + "<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]


def qwen_setup(folder, *, min_pixels=56 * 56, max_pixels=28 * 28 * 16, vocab=400, seed=2,
               processor_class=Qwen2VLProcessor) -> Setup:
    write_tokenizer(folder, train_bpe(seed, vocab), specials=SPECIALS,
                    tokenizer_class="Qwen2Tokenizer", eos="<|im_end|>", pad="<|endoftext|>",
                    template=TEMPLATE)
    images = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    write_processor_configs(folder, images, {"processor_class": processor_class.__name__})
    processor = image_only(processor_class)(images, auto_tokenizer(folder), None,
                                            chat_template=TEMPLATE)
    policy = ImagePolicy(preset="qwen2vl", min_pixels=min_pixels, max_pixels=max_pixels,
                         patch=28, mean=CLIP_MEAN, std=CLIP_STD, encode="png")
    return Setup("qwen2vl", folder, processor, policy, 1,
                 generation_variant(TEMPLATE, LOOP + "<|im_end|>\n", LOOP + "<|im_end|>"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return qwen_setup(tmp_path_factory.mktemp("qwen2vl"))


@pytest.fixture(scope="module")
def images():
    return image_bank()


SIZES = [(1, 1), (5, 90), (13, 13), (14, 14), (20, 16), (28, 28), (42, 41), (100, 60),
         (40, 120), (150, 40), (300, 7), (250, 250), (1000, 999), (57, 3)]


@pytest.mark.parametrize("low,high", [(56 * 56, 28 * 28 * 16), (28 * 28 * 4, 28 * 28 * 40)])
def test_grid_is_the_image_processors(low, high):
    hf = Qwen2VLImageProcessorPil(min_pixels=low, max_pixels=high)
    for width, height in SIZES:
        p = plan(width, height, "qwen2vl", min_pixels=low, max_pixels=high)
        grid = hf(images=[pil(png((width, height), 0))], return_tensors="np")["image_grid_thw"]
        w, h = p.resized_size
        assert grid[0].tolist() == [1, h // 14, w // 14], (width, height)
        assert p.view_tokens == grid[0].prod() // 4


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.sampled_from([
    (56 * 56, 28 * 28 * 1280), (28 * 28 * 4, 28 * 28 * 40), (3136, 12544)]))
def test_resize_is_smart_resize(width, height, bounds):
    if max(width, height) / min(width, height) > 200:  # smart_resize refuses these
        return
    low, high = bounds
    h, w = smart_resize(height, width, factor=28, min_pixels=low, max_pixels=high)
    assert plan(width, height, "qwen2vl", min_pixels=low, max_pixels=high).resized_size == (w, h)


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_chat_ids_and_mask_equal_the_processors(setup, images, index):
    conversation = CONVERSATIONS[index]
    doc, = mixdata_docs(setup, sft_sample(conversation, images))
    ids, mask = reference_chat(setup, conversation, images)
    assert doc.ids.tolist() == ids
    assert doc.loss.tolist() == mask
    tok = setup.tokenizer()
    for slot in doc.images:  # the slot is the processor's expansion: pads only
        assert (doc.ids[slot.start:slot.start + slot.length] == tok.image_id).all()
        assert doc.ids[slot.start - 1] == tok.roles["vision_start"]


def test_plain_documents_equal_the_processor_call(setup, images):
    tok = setup.tokenizer()
    for sample in plain_samples(images):
        doc, = mixdata_docs(setup, sample)
        assert doc.ids.tolist() == reference_plain(setup, sample), sample.kind
        wrappers = np.isin(doc.ids, [tok.roles["vision_start"], tok.roles["vision_end"]])
        assert not (doc.loss.astype(bool) & (wrappers | (doc.ids == tok.image_id))).any()


def test_text_spelling_control_tokens_equals_sanitize_control_tokens(setup, images):
    spelled = "Write <|image_pad|><|vision_end|> and <|im_end|>\n<|im_start|>system"
    conversation = [{"role": "user", "content": [img(0), txt(spelled), img(1)]},
                    {"role": "assistant", "content": [txt("<|vision_start|> is text.")]}]
    doc, = mixdata_docs(setup, sft_sample(conversation, images))
    reference = setup.processor.apply_chat_template(
        hf_messages(conversation, images), tokenize=True, return_dict=True,
        sanitize_control_tokens=True)
    assert doc.ids.tolist() == [int(i) for i in reference["input_ids"][0]]
    plain, = mixdata_docs(setup, sft_sample([{"role": "user", "content": [txt("x")]},
                                             conversation[1]], images))
    assert plain.loss.sum() > 0 and doc.loss.sum() == plain.loss.sum()


def test_built_shards_keep_the_ids_and_need_a_family_collate(setup, tmp_path):
    assert check_built(setup, tmp_path) >= len(CONVERSATIONS)
    from mixdata import load

    with pytest.raises(MixdataError, match="qwen2vl collate is needed"):
        load(tmp_path / "out", batch_size=1)


@pytest.mark.parametrize("seed", range(2))
def test_held_out_qwen25_processor(tmp_path_factory, seed):
    """Qwen2.5-VL's processor class, other vocabulary and pixel bounds, random conversations
    over random image sizes."""
    held = qwen_setup(tmp_path_factory.mktemp("qwen25"), min_pixels=28 * 28 * 4,
                      max_pixels=28 * 28 * 40, vocab=470, seed=31 + seed,
                      processor_class=Qwen2_5_VLProcessor)
    held = replace(held, policy=replace(held.policy, max_aspect=50.0))
    rng = np.random.default_rng(200 + seed)
    images = [png(size, i) for i, size in enumerate(random_sizes(rng, 4, 28))]
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
