"""Family collates: `mixdata.load(..., collate=family)` gives exactly an HF model's forward
keyword arguments, with the family's pixel layout and normalisation.

- keys: every one a parameter of the family's real transformers `forward`;
- labels: unshifted (the model shifts), -100 at every document's first token, and, once
  shifted, exactly mixdata's contract labels (property test over random packings);
- pixels: bit-identical to the family's HF image processor given the same processed image
  (what the shard stores). Against the source image, exact for qwen2vl and for llava-next's
  and internvl's tiles; the idefics3 tiles (HF resizes twice: to the longest edge, then to
  whole tiles; mixdata once) and the llava-next / internvl global views (HF resizes the
  source; mixdata the processed image) differ by resampling only: at most 4 grey levels,
  0.5 on average, on smooth images;
- Qwen2-VL's M-RoPE rows equal `get_rope_index` on each document alone;
- DataLoader workers and resume keep the batches and their stats.
"""
from __future__ import annotations

import copy
import inspect
import io

import numpy as np
import pytest
import torch
from dialect_fixtures import pil, random_sizes
from hf_fixtures import built
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from resume_check import assert_same, check_resume
from test_dialect_idefics3 import idefics3_setup, smolvlm_setup
from test_dialect_internvl import internvl_setup
from test_dialect_llava_next import llava_setup
from test_dialect_qwen2vl import qwen_setup
from test_train_hf_packing import doc_alone, sequences

from mixdata import load
from mixdata.errors import MixdataError
from mixdata.image import process
from mixdata.loading.collate import row_arrays
from mixdata.loading.families import (
    FamilyCollate,
    ModelBatch,
    decode_views,
    family_collator,
    hf_labels,
    normalise_into,
    pixel_table,
)
from mixdata.manifest import read_manifest
from mixdata.shards import PackedSequence

SETUPS = {"idefics3": idefics3_setup, "smolvlm": smolvlm_setup, "llava-next": llava_setup,
          "qwen2vl": qwen_setup, "internvl": internvl_setup}
FAMILY = {"smolvlm": "idefics3"}
FORWARD = {"idefics3": "Idefics3ForConditionalGeneration",
           "smolvlm": "SmolVLMForConditionalGeneration",
           "llava-next": "LlavaNextForConditionalGeneration",
           "qwen2vl": "Qwen2VLForConditionalGeneration",
           "internvl": "InternVLForConditionalGeneration"}
IMAGE_KEYS = {"idefics3": {"pixel_values", "pixel_attention_mask"},
              "llava-next": {"pixel_values", "image_sizes"},
              "qwen2vl": {"pixel_values", "image_grid_thw"}, "internvl": {"pixel_values"}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """kind -> (setup, shard folder), built once per module."""
    out = {}
    for kind, make in SETUPS.items():
        root = tmp_path_factory.mktemp(kind)
        setup = make(root / "model")
        out[kind] = (setup, built(setup, root))
    return out


def family_of(kind: str) -> str:
    return FAMILY.get(kind, kind)


def collated(setup, out):
    """The family collator of built shards, their sequences and checked rows."""
    collator = family_collator(setup.family, read_manifest(out), str(out))
    seqs = sequences(out)
    return collator, seqs, [collator.cut(s) for s in seqs]


@pytest.mark.parametrize("kind", list(SETUPS))
def test_batch_keys_are_the_models_forward_arguments(shards, kind):
    import transformers

    setup, out = shards[kind]
    batch = next(iter(load(out, batch_size=2, collate=family_of(kind), shuffle_buffer=0)))
    family = family_of(kind)
    assert isinstance(batch, ModelBatch)
    assert set(batch) == {"input_ids", "labels", "position_ids", "use_cache"} | IMAGE_KEYS[family]
    forward = inspect.signature(getattr(transformers, FORWARD[kind]).forward).parameters
    assert set(batch) - {"use_cache"} <= set(forward), set(batch) - set(forward)
    # InternVL takes use_cache through **kwargs, on to its language model's forward
    assert "use_cache" in forward or forward["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    assert batch["use_cache"] is False and batch["input_ids"].dtype == torch.int64
    rows, length = batch["input_ids"].shape
    assert setup.family == family
    want = (4, rows, length) if family == "qwen2vl" else (rows, length)
    assert tuple(batch["position_ids"].shape) == want
    assert batch["pixel_values"].dtype == torch.float32


@pytest.mark.parametrize("kind", list(SETUPS))
def test_pixels_equal_the_image_processor_on_the_same_images(shards, kind):
    setup, out = shards[kind]
    collator, seqs, rows = collated(setup, out)
    processor = setup.processor.image_processor
    family, checked = family_of(kind), 0
    for seq, row in zip(seqs, rows):
        batch = collator.collate([row])
        assert (batch.stats.num_tokens, batch.stats.num_images, batch.stats.doc_lengths_sq) == \
            (len(seq.tokens), len(seq.images), int((np.diff(seq.docs).astype(int) ** 2).sum()))
        first = 0
        for index, (data, plan) in enumerate(row.images):
            image = [[pil(data)]] if family == "idefics3" else [pil(data)]
            ref = processor(images=image, return_tensors="np")
            pixels = ref["pixel_values"]
            if family == "idefics3":
                mine = batch["pixel_values"][0, first:first + pixels.shape[1]]
                assert batch["pixel_attention_mask"][0, first:first + pixels.shape[1]].all()
                pixels, first = pixels[0], first + pixels.shape[1]
            elif family == "llava-next":
                pixels = pixels[0]
                mine = batch["pixel_values"][index, :len(pixels)]
                assert batch["image_sizes"][index].tolist() == [plan.source_size[1],
                                                                plan.source_size[0]]
            else:
                mine = batch["pixel_values"][first:first + len(pixels)]
                first += len(pixels)
                if family == "qwen2vl":
                    assert batch["image_grid_thw"][index].tolist() == \
                        ref["image_grid_thw"][0].tolist()
            assert np.array_equal(mine.numpy(), pixels), (kind, index)
            checked += 1
    assert checked >= 8


def smooth_png(size: tuple[int, int], seed: int) -> bytes:
    """A smooth image (low-frequency waves): resampling differences as photos show them."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [127 + 120 * np.sin(2 * np.pi * (x * rng.uniform(0.5, 2) + y * rng.uniform(0.5, 2))
                                   + rng.uniform(0, 6)) for _ in range(3)]
    out = io.BytesIO()
    Image.fromarray(np.stack(channels, -1).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


# (tiles exact, global view exact) against the processor on the source image
EXACT = {"qwen2vl": (True, True), "llava-next": (True, False), "internvl": (True, False),
         "idefics3": (False, False)}


@pytest.mark.parametrize("kind", ["idefics3", "llava-next", "qwen2vl", "internvl"])
def test_pixels_against_the_processor_on_the_source_image(tmp_path, kind):
    setup = SETUPS[kind](tmp_path)
    processor = setup.processor.image_processor
    table = pixel_table(setup.policy.mean, setup.policy.std)
    level = 1 / (255 * np.asarray(setup.policy.std, np.float32)).reshape(1, 3, 1, 1)
    sizes = [(100, 60), (20, 16), (40, 120), (64, 64), (150, 40),
             *random_sizes(np.random.default_rng(1), 15, 32)]
    tiles_exact, global_exact = EXACT[kind]
    for k, size in enumerate(sizes):
        data = smooth_png(size, k)
        processed = process(data, setup.policy)
        views = decode_views(processed.data, processed.plan)
        mine = np.empty((len(views), 3, *views.shape[1:3]), np.float32)
        normalise_into(views, table, mine)
        images = [[pil(data)]] if kind == "idefics3" else [pil(data)]
        ref = processor(images=images, return_tensors="np")["pixel_values"]
        if kind == "qwen2vl":  # patches: equal to the processed image's, tested bit for bit above
            on_processed = processor(images=[pil(processed.data)], return_tensors="np")
            assert np.array_equal(ref, on_processed["pixel_values"]), size
            continue
        ref = ref if kind == "internvl" else ref[0]
        levels = np.abs(ref - mine) / level
        glob = 0 if processed.plan.global_view == "before" else len(mine) - 1
        for index, view in enumerate(levels):
            exact = global_exact if (index == glob and len(mine) > 1) else tiles_exact
            if exact:
                assert view.max() == 0, (size, index)
            else:
                assert view.max() <= 4.01 and view.mean() <= 0.5, (size, index, view.max())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=5), st.integers(0, 8),
       st.integers(0, 2 ** 32 - 1))
def test_unshifted_labels_shift_to_the_contract_labels(lengths, padding, seed):
    """Shifted by one, the family labels are exactly the default collate's labels: no target
    crosses a document, and a document's first token is never a target."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    seq = PackedSequence(key="k", tokens=rng.integers(0, 50, n).astype(np.int32),
                         loss=rng.integers(0, 2, n).astype(np.uint8),
                         docs=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
                         images=[], meta={})
    length = n + padding
    labels = hf_labels(seq, length)
    shifted = np.full(length, -100)
    shifted[:-1] = labels[1:]
    assert np.array_equal(shifted, row_arrays(seq, length)[0])
    assert (labels[seq.docs[:-1]] == -100).all() and (labels[n:] == -100).all()


def test_mrope_positions_equal_get_rope_index_per_document(shards):
    from transformers import Qwen2VLConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    setup, out = shards["qwen2vl"]
    tok = setup.tokenizer()
    config = Qwen2VLConfig(vision_config={"depth": 1, "embed_dim": 16, "num_heads": 2},
                           text_config={"hidden_size": 16, "num_hidden_layers": 1,
                                        "num_attention_heads": 2, "vocab_size": tok.vocab_size,
                                        "intermediate_size": 16},
                           image_token_id=tok.image_id)
    model = Qwen2VLModel(config)
    collator, seqs, rows = collated(setup, out)
    batch = collator.collate(rows)
    checked = 0
    for b, seq in enumerate(seqs):
        for d in range(len(seq.docs) - 1):
            a, e = int(seq.docs[d]), int(seq.docs[d + 1])
            ids = torch.from_numpy(seq.tokens[a:e].astype(np.int64))[None]
            alone = collator.collate([collator.cut(doc_alone(seq, d))])
            grid = alone.get("image_grid_thw")
            if grid is None:
                continue
            want, _ = model.get_rope_index(ids, mm_token_type_ids=(ids == tok.image_id).int(),
                                           image_grid_thw=grid)
            assert torch.equal(batch["position_ids"][1:, b, a:e], want[:, 0])
            assert torch.equal(batch["position_ids"][0, b, a:e], torch.arange(e - a))
            checked += 1
    assert checked >= 3


def test_workers_and_resume_keep_batches_and_stats(shards):
    _, out = shards["qwen2vl"]

    def make(workers=0):
        return load(out, batch_size=2, collate="qwen2vl", seed=1, streams=2).loader(
            num_workers=workers)

    plain = check_resume(make, total=4, stop=[0, 1, 3])
    for workers in (2, 1):
        loader = make(workers)
        got = [b for _, b in zip(range(4), loader)]
        del loader
        for a, b in zip(plain, got):
            assert isinstance(b, ModelBatch) and b.stats == a.stats
            assert_same(dict(a), dict(b))
    # what DataLoader's pin_memory does to a mutable mapping: a copy, then updated values
    clone = copy.copy(plain[0])
    assert isinstance(clone, ModelBatch) and clone.stats == plain[0].stats


def test_batch_to_moves_tensors_and_casts_only_pixels(shards):
    _, out = shards["idefics3"]
    batch = next(iter(load(out, batch_size=2, collate="idefics3")))
    moved = batch.to("cpu", dtype=torch.bfloat16)
    assert moved["pixel_values"].dtype == torch.bfloat16 and moved.stats == batch.stats
    assert moved["input_ids"].dtype == torch.int64 and moved["use_cache"] is False
    assert moved["pixel_attention_mask"].dtype == torch.bool


def test_wrong_collates_are_refused(shards, tmp_path):
    _, idefics3 = shards["idefics3"]
    with pytest.raises(MixdataError, match="shards are in the idefics3 dialect"):
        load(idefics3, batch_size=1, collate="qwen2vl")
    with pytest.raises(MixdataError, match="not a family collate"):
        load(idefics3, batch_size=1, collate="llava")
    _, qwen = shards["qwen2vl"]
    with pytest.raises(MixdataError, match="patch_size 16 x merge_size 2 is 32"):
        load(qwen, batch_size=1, collate=FamilyCollate(family="qwen2vl", patch_size=16))
    with pytest.raises(MixdataError, match="qwen2vl collate is needed"):
        load(qwen, batch_size=1)
