"""The llava-next dialect against transformers' LlavaNextProcessor, built locally.

A Mistral-style tokenizer (Metaspace BPE, BOS from the post-processor, the [INST] template
without generation markers) and a held-out Vicuna-style one (byte-level BPE, the USER:/
ASSISTANT: template with its own `{% generation %}` markers, other tile, patch size, pinpoints
and feature strategy).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from dialect_fixtures import (
    CONVERSATIONS,
    Setup,
    auto_tokenizer,
    image_bank,
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
from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor
from transformers.image_processing_utils import select_best_resolution

from mixdata.errors import MixdataError
from mixdata.image import ImagePolicy, plan
from mixdata.sample import ImagePart, Sample, TextPart
from mixdata.tokens.families import llava_next_count

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
REPLY = "{{ ' ' + message['content'][0]['text'] + '</s> '}}"
# llava-hf/llava-v1.6-mistral-7b-hf's chat template
MISTRAL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + "
    "message['content'][0]['text'] + '\\n<</SYS>>\\n\\n' }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}{# Render all images first #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}{# Render all text "
    "next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    + REPLY + "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}")
MISTRAL_MARKED = MISTRAL_TEMPLATE.replace(REPLY, (
    "{{ ' ' }}{% generation %}{{ message['content'][0]['text'] + '</s>' }}{% endgeneration %}"
    "{{ ' ' }}"))
# llava-hf/llava-v1.6-vicuna-7b-hf's chat template (it marks the replies itself)
VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper()"
    " + ': '}}{% endif %}{# Render all images first #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}{# Render all text "
    "next #}{% if message['role'] != 'assistant' %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def llava_setup(folder, *, tile=32, patch=16, pinpoints_hw=((32, 64), (64, 32), (64, 64),
                (96, 32), (32, 96)), strategy="default", additional=1, vicuna=False,
                vocab=380, seed=1) -> Setup:
    template = VICUNA_TEMPLATE if vicuna else MISTRAL_TEMPLATE
    write_tokenizer(folder, train_bpe(seed, vocab, metaspace=not vicuna),
                    specials=["<s>", "</s>", "<image>"] + (["<unk>"] if vicuna else []),
                    tokenizer_class="PreTrainedTokenizerFast" if vicuna else "LlamaTokenizer",
                    bos="<s>", eos="</s>", pad="<unk>", unk=None if vicuna else "<unk>",
                    bos_post=True, template=template)
    pins = [list(p) for p in pinpoints_hw]
    images = LlavaNextImageProcessorPil(size={"shortest_edge": tile},
                                        crop_size={"height": tile, "width": tile},
                                        image_grid_pinpoints=pins)
    write_processor_configs(folder, images, {
        "processor_class": "LlavaNextProcessor", "patch_size": patch,
        "vision_feature_select_strategy": strategy, "num_additional_image_tokens": additional})
    processor = LlavaNextProcessor(images, auto_tokenizer(folder), patch_size=patch,
                                   vision_feature_select_strategy=strategy,
                                   num_additional_image_tokens=additional,
                                   chat_template=template)
    policy = ImagePolicy(preset="llava-next", tile=tile, pinpoints=[[w, h] for h, w in pins],
                         mean=CLIP_MEAN, std=CLIP_STD, encode="png")
    return Setup("llava-next", folder, processor, policy, (tile // patch) ** 2,
                 template if vicuna else MISTRAL_MARKED)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return llava_setup(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def images():
    return image_bank()


SIZES = [(1, 1), (5, 90), (20, 16), (31, 33), (32, 32), (33, 32), (64, 64), (100, 60),
         (40, 120), (150, 40), (97, 95), (300, 7), (250, 250), (64, 31), (1000, 999)]


def test_geometry_and_counts_are_the_processors(setup):
    """Pinpoint, patches, image_sizes and the <image> count of each size, as the processor."""
    processor, tok = setup.processor, setup.tokenizer()
    image_processor = processor.image_processor
    strips = replace(setup, policy=replace(setup.policy, max_aspect=100.0))
    for width, height in SIZES:
        p = plan(width, height, "llava-next", tile=32, pinpoints=setup.policy.pinpoints)
        out = image_processor(images=[pil(png((width, height), 0))], return_tensors="np")
        assert out["image_sizes"][0].tolist() == [height, width] == list(p.source_size)[::-1]
        assert out["pixel_values"].shape[1] == p.num_views == 1 + p.rows * p.cols
        sample = Sample(id="c", source="s", kind="caption",
                        parts=(ImagePart(data=png((width, height), 0)), TextPart(text="A.")))
        doc, = mixdata_docs(strips, sample, tokenizer=tok)
        counted = processor(text="<image>", images=[pil(png((width, height), 0))])
        want = int((np.asarray(counted["input_ids"][0]) == tok.image_id).sum())
        assert int((doc.ids == tok.image_id).sum()) == want, (width, height)


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000))
def test_pinpoint_and_count_are_the_processors_arithmetic(setup, width, height):
    """select_best_resolution and LlavaNextProcessor's feature count, without pixels."""
    processor = setup.processor
    pins_hw = processor.image_processor.image_grid_pinpoints
    p = plan(width, height, "llava-next", tile=32, pinpoints=setup.policy.pinpoints)
    assert tuple(select_best_resolution((height, width), pins_hw)) == p.canvas_size[::-1]
    count = processor._get_number_of_features(height, width, 32, 32) - 1  # "default" strategy
    assert llava_next_count(p, patch_size=16, extra_tokens=0) == count


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_chat_ids_and_mask_equal_the_processors(setup, images, index):
    conversation = CONVERSATIONS[index]
    doc, = mixdata_docs(setup, sft_sample(conversation, images))
    ids, mask = reference_chat(setup, conversation, images)
    assert doc.ids.tolist() == ids
    assert doc.loss.tolist() == mask
    assert doc.ids[0] == setup.tokenizer().bos_id  # the post-processor's, as the processor


def test_plain_documents_equal_the_processor_call(setup, images):
    for sample in plain_samples(images):
        doc, = mixdata_docs(setup, sample)
        assert doc.ids.tolist() == reference_plain(setup, sample), sample.kind


def test_built_shards_keep_the_ids_and_need_a_family_collate(setup, tmp_path):
    assert check_built(setup, tmp_path) >= len(CONVERSATIONS)
    from mixdata import load

    with pytest.raises(MixdataError, match="llava-next collate is needed"):
        load(tmp_path / "out", batch_size=1)


@pytest.mark.parametrize("seed", range(2))
def test_held_out_vicuna_processor(tmp_path_factory, seed):
    """Other tokenizer kind and template (with generation markers), tile 24 with 8 px patches,
    other pinpoints, the "full" feature strategy; random conversations and image sizes."""
    held = llava_setup(tmp_path_factory.mktemp("vicuna"), tile=24, patch=8,
                       pinpoints_hw=((24, 48), (48, 24), (48, 48), (72, 24), (24, 72), (72, 72)),
                       strategy="full", additional=0, vicuna=True, vocab=450, seed=21 + seed)
    rng = np.random.default_rng(100 + seed)
    images = [png(size, i) for i, size in enumerate(random_sizes(rng, 4, 24))]
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
