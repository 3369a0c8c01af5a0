"""Tokenizers and rendering: specials, hashes, loss masks, image slots, chunking, trimming."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixdata.errors import MixdataError, RecordRejected
from mixdata.image import image_token_count, layout, plan, special_tokens
from mixdata.sample import ImagePart, Sample, TextPart
from mixdata.tokens import load_tokenizer, render, special_names

BYTES = load_tokenizer("bytes")
TPT = 9
SMALL = plan(100, 80, "none", max_side=64)                      # one view
GRID = plan(900, 500, "idefics3", longest_edge=728, tile=364)   # 2x1 tiles + global
TILED = plan(1500, 1000, "mm15", tile=336, min_tiles=4, max_tiles=9)


def image() -> ImagePart:
    return ImagePart(ref="img.jpg")


def sample(kind, *parts, id="s1") -> Sample:
    return Sample(id=id, source="src", kind=kind, parts=tuple(parts))


def supervised_runs(doc, tok) -> list[str]:
    """Decoded maximal runs of supervised tokens."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], doc.loss, [0]])))
    return [tok.decode(doc.ids[a:b]) for a, b in zip(edges[::2], edges[1::2])]


# --- tokenizers -------------------------------------------------------------------------

@given(st.text())
def test_bytes_tokenizer_round_trips_any_unicode(text):
    ids = BYTES.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert BYTES.decode(ids) == text


def test_bytes_specials_follow_the_bytes_and_render_by_name():
    names = special_names()
    assert names[:7] == ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>",
                         "<|end|>"]
    assert set(special_tokens()) <= set(names) and len(set(names)) == len(names)
    assert sorted(BYTES.special_ids.values()) == list(range(256, BYTES.vocab_size))
    assert (BYTES.pad_id, BYTES.bos_id, BYTES.eos_id) == (256, 257, 258)
    assert BYTES.image_id == BYTES.special_id("<image>")
    assert BYTES.decode([BYTES.bos_id, *BYTES.encode("hé"), BYTES.image_id]) == "<s>hé<image>"
    assert BYTES.encode("<image>") == list(b"<image>"), "text never turns into a special"
    with pytest.raises(KeyError, match="<nope>"):
        BYTES.special_id("<nope>")


def test_bytes_tokenizer_pickles_as_its_spec():
    blob = pickle.dumps(BYTES)
    assert len(blob) < 200
    again = pickle.loads(blob)
    assert again.sha256 == BYTES.sha256 and again.special_ids == BYTES.special_ids


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A tiny byte-level BPE trained here, already holding `<s>` as a special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["a cat sat on the mat", "the dog ate the cat food", "naïve café über"] * 20
    tok.train_from_iterator(corpus, trainer)
    folder = tmp_path_factory.mktemp("bpe")
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_hf_tokenizer_loads_with_specials_added(bpe_dir):
    # a tokenizer.json file is mixdata's own dialect; a folder is the model's (test_dialect_*)
    tok = load_tokenizer(str(bpe_dir / "tokenizer.json"))
    assert tok.identity == str(bpe_dir / "tokenizer.json")
    assert tok.special_id("<s>") == 0, "a special the file already has keeps its id"
    names = special_names()
    assert set(tok.special_ids) == set(names)
    assert len(set(tok.special_ids.values())) == len(names)
    assert max(tok.special_ids.values()) < tok.vocab_size
    text = "the cat ate über café\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.image_id not in tok.encode("<image> <s>"), "text never turns into a special"
    assert tok.decode([tok.bos_id, tok.image_id, tok.eos_id]) == "<s><image></s>"


def test_hf_hash_is_stable_across_processes_and_tracks_the_vocabulary(bpe_dir, tmp_path):
    tok = load_tokenizer(str(bpe_dir / "tokenizer.json"))
    code = ("import sys; from mixdata.tokens import load_tokenizer; "
            "print(load_tokenizer(sys.argv[1]).sha256)")
    other = subprocess.run([sys.executable, "-c", code, str(bpe_dir / "tokenizer.json")],
                           check=True, capture_output=True, text=True).stdout.strip()
    assert other == tok.sha256 != BYTES.sha256
    again = pickle.loads(pickle.dumps(tok))
    assert again.sha256 == tok.sha256 and again.encode("the cat") == tok.encode("the cat")
    data = json.loads((bpe_dir / "tokenizer.json").read_text())
    data["model"]["vocab"]["zzz"] = len(data["model"]["vocab"]) + 50
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    assert load_tokenizer(str(tmp_path / "tokenizer.json")).sha256 != tok.sha256


def test_bad_tokenizer_specs_are_clear_errors(tmp_path):
    with pytest.raises(MixdataError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.json"))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(MixdataError, match=r"not a valid tokenizer\.json"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))


# --- rendering --------------------------------------------------------------------------

@pytest.mark.parametrize("img_plan", [SMALL, GRID, TILED], ids=["none", "idefics3", "mm15"])
def test_image_slot_holds_its_layout_and_views_times_tokens_per_tile_placeholders(img_plan):
    doc, = render(sample("interleaved", TextPart(text="look:"), image(), TextPart(text="ok")),
                  [img_plan], BYTES, tokens_per_tile=TPT, seq_len=4096)
    slot, = doc.images
    span = doc.ids[slot.start:slot.start + slot.length]
    assert slot.index == 0 and slot.views == img_plan.num_views
    assert int((span == BYTES.image_id).sum()) == img_plan.num_views * TPT
    assert int((doc.ids == BYTES.image_id).sum()) == image_token_count(img_plan, TPT)
    assert BYTES.decode(span) == "".join(layout(img_plan, TPT))
    assert not doc.loss[slot.start:slot.start + slot.length].any()
    assert BYTES.decode(doc.ids[:slot.start]) == "<s>look:"
    assert BYTES.decode(doc.ids[slot.start + slot.length:]) == "ok</s>"
    assert doc.ids.dtype == np.int32 and doc.loss.dtype == np.uint8


def test_plain_kinds_supervise_text_and_end_but_never_images():
    parts = (TextPart(text="one"), TextPart(text="two"), image(), TextPart(text="three"))
    doc, = render(sample("interleaved", *parts), [SMALL], BYTES, tokens_per_tile=TPT,
                  seq_len=4096)
    assert BYTES.decode(doc.ids[:8]) == "<s>one\ntwo", "adjacent texts are joined by \\n"
    assert supervised_runs(doc, BYTES) == ["one\ntwo", "three</s>"]
    assert doc.loss[0] == 0


@pytest.mark.parametrize("kind,supervised", [("caption", True), ("ocr", True),
                                             ("interleaved", False), ("text", False)])
def test_caption_loss_supervises_only_captions_and_ocr(kind, supervised):
    doc, = render(sample(kind, image(), TextPart(text="a red bus")), [SMALL], BYTES,
                  tokens_per_tile=TPT, seq_len=4096, loss="captions")
    assert supervised_runs(doc, BYTES) == (["a red bus</s>"] if supervised else [])


ROLES = st.sampled_from(["system", "user", "assistant"])
TEXTS = st.text(st.characters(codec="utf-8", exclude_characters="<>"), max_size=12)


@st.composite
def conversations(draw):
    """SFT parts: turns of text, with images in user turns (before or after the text)."""
    parts, images = [], 0
    for _ in range(draw(st.integers(1, 6))):
        role = draw(ROLES)
        if role == "user" and draw(st.booleans()):
            parts.append(image())
            images += 1
        parts += [TextPart(text=t, role=role) for t in draw(st.lists(TEXTS, min_size=1,
                                                                     max_size=2))]
    return parts, images


def expected_assistant_runs(parts) -> list[str]:
    runs, current, role = [], [], None
    for part in [*parts, TextPart(text="", role="user")]:
        if isinstance(part, TextPart) and part.role != role:
            if role == "assistant":
                runs.append("\n".join(current) + "<|end|>")
            role, current = part.role, []
        if isinstance(part, TextPart):
            current.append(part.text)
    return runs


@settings(max_examples=150, deadline=None)
@given(conversations())
def test_sft_loss_covers_exactly_the_assistant_turns_and_their_end(conv):
    parts, images = conv
    doc, = render(sample("sft", *parts), [GRID] * images, BYTES, tokens_per_tile=TPT,
                  seq_len=100_000)
    assert supervised_runs(doc, BYTES) == expected_assistant_runs(parts)
    text = BYTES.decode(doc.ids)
    assert text.startswith("<s><|") and text.endswith("<|end|></s>")
    assert len(doc.images) == images


def test_sft_template_and_image_placement():
    parts = (image(), TextPart(text="What is it?", role="user"),
             TextPart(text="A bus.", role="assistant"))
    doc, = render(sample("sft", *parts), [SMALL], BYTES, tokens_per_tile=TPT, seq_len=4096)
    expected = ("<s><|user|>" + "".join(layout(SMALL, TPT)) + "What is it?<|end|>"
                "<|assistant|>A bus.<|end|></s>")
    assert BYTES.decode(doc.ids) == expected
    assert doc.images[0].start == 2
    with pytest.raises(RecordRejected) as info:
        render(sample("sft", TextPart(text="hi")), [], BYTES, tokens_per_tile=TPT, seq_len=64)
    assert info.value.reason == "sft_role"


def test_long_text_is_chunked_with_a_start_per_chunk_and_one_end():
    text = "".join(chr(0x41 + i % 26) for i in range(1000)) + "é"
    docs = render(sample("text", TextPart(text=text)), [], BYTES, tokens_per_tile=TPT,
                  seq_len=128)
    assert len(docs) == 8
    assert all(len(d.ids) <= 128 and d.ids[0] == BYTES.bos_id for d in docs)
    assert all(BYTES.eos_id not in d.ids for d in docs[:-1]) and docs[-1].ids[-1] == BYTES.eos_id
    body = np.concatenate([d.ids[1:] for d in docs])
    assert BYTES.decode(body) == text + "</s>"
    assert all(d.loss[0] == 0 and d.loss[1:].all() for d in docs)


def test_long_sft_without_images_is_chunked_keeping_its_mask():
    parts = [TextPart(text="q" * 50, role="user"), TextPart(text="a" * 80, role="assistant")]
    whole, = render(sample("sft", *parts), [], BYTES, tokens_per_tile=TPT, seq_len=1000)
    docs = render(sample("sft", *parts), [], BYTES, tokens_per_tile=TPT, seq_len=64)
    assert len(docs) == 3
    assert np.array_equal(np.concatenate([d.loss[1:] for d in docs]), whole.loss[1:])


def test_image_documents_that_cannot_fit_are_trimmed_at_a_part_boundary_or_rejected():
    parts = (TextPart(text="intro"), image(), TextPart(text="x" * 30), image(),
             TextPart(text="tail"))
    full, = render(sample("interleaved", *parts), [SMALL, SMALL], BYTES, tokens_per_tile=TPT,
                   seq_len=4096)
    seq_len = len(full.ids) - 5
    doc, = render(sample("interleaved", *parts), [SMALL, SMALL], BYTES, tokens_per_tile=TPT,
                  seq_len=seq_len)
    assert len(doc.ids) <= seq_len
    assert [s.index for s in doc.images] == [0]
    assert BYTES.decode(doc.ids).endswith("x" * 30 + "</s>")
    assert doc.loss[-1] == 0, "a trimmed document did not really end"
    assert np.array_equal(doc.ids[:-1], full.ids[:len(doc.ids) - 1])
    with pytest.raises(RecordRejected) as info:
        render(sample("interleaved", *parts), [SMALL, SMALL], BYTES, tokens_per_tile=TPT,
               seq_len=seq_len, on_overflow="reject")
    assert info.value.reason == "too_long"


def test_trimming_needs_a_supervised_token_in_what_is_kept():
    parts = (image(), TextPart(text="caption " * 20))
    for loss in ("all", "captions"):
        with pytest.raises(RecordRejected, match="too_long"):
            render(sample("interleaved", *parts), [GRID], BYTES, tokens_per_tile=TPT,
                   seq_len=60, loss=loss)
    sft = (TextPart(text="hi", role="user"), TextPart(text="yes", role="assistant"), image(),
           TextPart(text="more", role="assistant"))
    doc, = render(sample("sft", *sft), [GRID], BYTES, tokens_per_tile=TPT, seq_len=40)
    assert BYTES.decode(doc.ids) == "<s><|user|>hi<|end|><|assistant|>yes<|end|></s>"
    assert supervised_runs(doc, BYTES) == ["yes<|end|>"]


def test_arguments_are_checked():
    one = sample("caption", image(), TextPart(text="x"))
    with pytest.raises(ValueError, match="1 images but 0 plans"):
        render(one, [], BYTES, tokens_per_tile=TPT, seq_len=64)
    with pytest.raises(ValueError, match="loss"):
        render(one, [SMALL], BYTES, tokens_per_tile=TPT, seq_len=64, loss="some")
    with pytest.raises(ValueError, match="on_overflow"):
        render(one, [SMALL], BYTES, tokens_per_tile=TPT, seq_len=64, on_overflow="drop")
