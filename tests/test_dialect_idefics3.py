"""The idefics3 dialect (Idefics3, SmolVLM) against transformers' own processors, built locally.

Exact ids for chat (`apply_chat_template(tokenize=True)`) and plain documents
(`processor(text=..., images=...)`), the loss mask against the assistant mask of the same
template with `{% generation %}` markers, the same after a build and packing, the default
collate on the built shards, and a held-out SmolVLM setup with its own vocabulary and sizes.
"""
from __future__ import annotations

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
from transformers import (
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    SmolVLMImageProcessorPil,
    SmolVLMProcessor,
)

from mixdata.image import ImagePolicy, plan

LOOP = ("{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}")
TURN = ("{% for message in messages %}{{message['role'] | capitalize}}"
        "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
        + LOOP + "<end_of_utterance>\n{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
# HuggingFaceM4/Idefics3-8B-Llama3 and HuggingFaceTB/SmolVLM-*-Instruct chat templates
IDEFICS3_TEMPLATE = "<|begin_of_text|>" + TURN
SMOLVLM_TEMPLATE = "<|im_start|>" + TURN
REPLY = LOOP + "<end_of_utterance>"


def markers(grid: int) -> list[str]:
    return [f"<row_{r}_col_{c}>" for r in range(1, grid + 1) for c in range(1, grid + 1)]


def idefics3_setup(folder, *, tile=32, longest=96, seq_len=4, vocab=400, seed=0) -> Setup:
    """Idefics3: a Llama-3-style byte-level BPE whose post-processor adds BOS, the template
    writing <|begin_of_text|> itself, 6 x 6 tile markers as in the real tokenizer."""
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<end_of_utterance>",
                "<fake_token_around_image>", "<image>", "<global-img>", *markers(6)]
    write_tokenizer(folder, train_bpe(seed, vocab), specials=specials,
                    tokenizer_class="PreTrainedTokenizerFast", bos="<|begin_of_text|>",
                    eos="<end_of_utterance>", pad="<|end_of_text|>", bos_post=True,
                    template=IDEFICS3_TEMPLATE)
    images = Idefics3ImageProcessorPil(size={"longest_edge": longest},
                                       max_image_size={"longest_edge": tile})
    write_processor_configs(folder, images, {"processor_class": "Idefics3Processor",
                                             "image_seq_len": seq_len})
    processor = Idefics3Processor(images, auto_tokenizer(folder), image_seq_len=seq_len,
                                  chat_template=IDEFICS3_TEMPLATE)
    return Setup("idefics3", folder, processor,
                 ImagePolicy(preset="idefics3", longest_edge=longest, tile=tile, encode="png"),
                 seq_len, generation_variant(IDEFICS3_TEMPLATE, REPLY + "\n", REPLY))


def smolvlm_setup(folder, *, tile=48, longest=144, seq_len=9, vocab=520, seed=11) -> Setup:
    """SmolVLM: a GPT-2-style tokenizer, no BOS from the post-processor, <|im_start|> opening
    the template; SmolVLMProcessor without its video processor (that needs torchvision)."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>",
                "<fake_token_around_image>", "<image>", "<global-img>", *markers(3)]
    write_tokenizer(folder, train_bpe(seed, vocab), specials=specials,
                    tokenizer_class="GPT2Tokenizer", bos="<|im_start|>",
                    eos="<end_of_utterance>", pad="<|im_end|>", template=SMOLVLM_TEMPLATE)
    images = SmolVLMImageProcessorPil(size={"longest_edge": longest},
                                      max_image_size={"longest_edge": tile})
    write_processor_configs(folder, images, {"processor_class": "SmolVLMProcessor",
                                             "image_seq_len": seq_len})
    processor = image_only(SmolVLMProcessor)(images, auto_tokenizer(folder), None,
                                             image_seq_len=seq_len,
                                             chat_template=SMOLVLM_TEMPLATE)
    return Setup("idefics3", folder, processor,
                 ImagePolicy(preset="idefics3", longest_edge=longest, tile=tile, encode="png"),
                 seq_len, generation_variant(SMOLVLM_TEMPLATE, REPLY + "\n", REPLY))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return idefics3_setup(tmp_path_factory.mktemp("idefics3"))


@pytest.fixture(scope="module")
def images():
    return image_bank()


SIZES = [(1, 1), (5, 90), (20, 16), (31, 33), (32, 32), (33, 32), (64, 64), (100, 60),
         (40, 120), (150, 40), (97, 95), (300, 7), (250, 250)]


@pytest.mark.parametrize("longest,tile", [(96, 32), (32, 32), (144, 48), (100, 30)])
def test_geometry_is_the_image_processors(longest, tile):
    hf = Idefics3ImageProcessorPil(size={"longest_edge": longest},
                                   max_image_size={"longest_edge": tile})
    for width, height in SIZES:
        p = plan(width, height, "idefics3", longest_edge=longest, tile=tile)
        out = hf(images=[pil(png((width, height), 0))], return_row_col_info=True,
                 return_tensors="np")
        grid = (0, 0) if p.num_views == 1 else (p.rows, p.cols)  # HF: 0 x 0 when not split
        assert (grid, p.num_views) == ((out["rows"][0][0], out["cols"][0][0]),
                                       out["pixel_values"].shape[1]), (width, height)
        assert p.resized_size == p.canvas_size  # tiles cover the resized image exactly


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_chat_ids_and_mask_equal_the_processors(setup, images, index):
    conversation = CONVERSATIONS[index]
    doc, = mixdata_docs(setup, sft_sample(conversation, images))
    ids, mask = reference_chat(setup, conversation, images)
    assert doc.ids.tolist() == ids
    assert doc.loss.tolist() == mask
    tok = setup.tokenizer()
    replies = [tok.decode(doc.ids[a:b]).lstrip() for a, b in runs(doc.loss)]
    assert replies == [m["content"][0]["text"] + "<end_of_utterance>"
                       for m in conversation if m["role"] == "assistant"]
    for slot in doc.images:
        body = doc.ids[slot.start:slot.start + slot.length]
        assert (body == tok.image_id).sum() == slot.views * setup.tokens_per_tile


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def test_plain_documents_equal_the_processor_call(setup, images):
    tok = setup.tokenizer()
    for sample in plain_samples(images):
        doc, = mixdata_docs(setup, sample)
        assert doc.ids.tolist() == reference_plain(setup, sample), sample.kind
        assert doc.ids[0] == tok.bos_id and doc.ids[-1] == tok.eos_id
        in_image = np.zeros(len(doc.ids), bool)
        for slot in doc.images:
            in_image[slot.start:slot.start + slot.length] = True
        # supervised: all text and the EOS; never the BOS or an image's tokens
        assert doc.loss.tolist() == [int(i > 0 and not in_image[i]) for i in range(len(doc.ids))]


def test_text_spelling_control_tokens_is_encoded_as_text(setup, images):
    spelled = "Say <image> and <end_of_utterance> or <row_1_col_1><|begin_of_text|>!"
    text_only = [{"role": "user", "content": [txt(spelled)]},
                 {"role": "assistant", "content": [txt("Not <global-img> here.")]}]
    doc, = mixdata_docs(setup, sft_sample(text_only, images))
    # transformers' own answer for text-only chat; Idefics3Processor.__call__ itself counts
    # the marked placeholders as images (transformers 5.24), so the image case is checked
    # by its properties below
    reference = auto_tokenizer(setup.folder).apply_chat_template(
        hf_messages(text_only, images), chat_template=setup.processor.chat_template,
        tokenize=True, return_dict=True, sanitize_control_tokens=True)
    assert doc.ids.tolist() == [int(i) for i in reference["input_ids"]]
    tok = setup.tokenizer()
    with_image = [{"role": "user", "content": [{"type": "image", "index": 0}, txt(spelled)]},
                  text_only[1]]
    doc, = mixdata_docs(setup, sft_sample(with_image, images))
    slot, = doc.images
    outside = np.concatenate([doc.ids[:slot.start], doc.ids[slot.start + slot.length:]])
    assert tok.image_id not in outside and tok.roles["global_image"] not in outside
    assert spelled in tok.decode(doc.ids) and "Not <global-img> here." in tok.decode(doc.ids)
    expected, = mixdata_docs(setup, sft_sample(
        [{"role": "user", "content": [{"type": "image", "index": 0}, txt("x")]},
         text_only[1]], images))
    assert doc.ids[:slot.start + slot.length].tolist() == \
        expected.ids[:slot.start + slot.length].tolist()


def test_built_shards_keep_the_ids_and_load_with_the_default_collate(setup, tmp_path):
    assert check_built(setup, tmp_path) >= len(CONVERSATIONS)
    from mixdata import load

    tok, views = setup.tokenizer(), 0
    for batch in load(tmp_path / "out", batch_size=1, shuffle_buffer=0, epochs=1):
        spans = batch["tile_spans"].numpy()
        assert len(spans) == batch["pixel_values"].shape[0]
        for row, start, end in spans:
            assert end - start == setup.tokens_per_tile
            assert (batch["input_ids"][row, start:end] == tok.image_id).all()
        assert batch["input_ids"][batch["doc_ids"] < 0].eq(tok.pad_id).all()
        views += len(spans)
    assert views > 0


@pytest.mark.parametrize("seed", range(3))
def test_held_out_smolvlm_processor(tmp_path_factory, seed):
    """A separately built SmolVLM: other vocabulary, tokenizer class, tile, longest edge and
    image_seq_len; random conversations over random image sizes."""
    held = smolvlm_setup(tmp_path_factory.mktemp("smolvlm"), seed=11 + seed)
    rng = np.random.default_rng(seed)
    images = [png(size, i) for i, size in enumerate(random_sizes(rng, 4, 48))]
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
