"""A source's `prompt:` turns caption and OCR samples into one-turn conversations."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from source_fixtures import image_bytes, spec, write_tar

from mixdata.building.prepare import prepare_record, unit_key
from mixdata.demo import content
from mixdata.demo.files import png_bytes
from mixdata.demo.sft import OCR_QUESTION
from mixdata.errors import RecordRejected
from mixdata.image import ImagePolicy
from mixdata.recipe import load_recipe
from mixdata.sample import ImagePart, Sample, TextPart
from mixdata.sources import open_source
from mixdata.sources.filtering import read_clean
from mixdata.sources.prompting import as_conversation
from mixdata.tokens import load_tokenizer
from mixdata.train.evaluate import EvalSetup, render_example

HIGHRES = ImagePolicy(preset="idefics3", longest_edge=256, tile=64, upscale=False)


def _caption(*parts, kind="caption") -> Sample:
    return Sample(id="c1", source="pairs", kind=kind, parts=parts, meta={"locator": "a.tar#c1"})


def test_caption_becomes_a_user_prompt_and_an_assistant_answer():
    image = ImagePart(data=image_bytes())
    turned = as_conversation(_caption(image, TextPart(text="a red circle")), "Describe it.")
    assert turned.kind == "sft" and turned.id == "c1" and turned.source == "pairs"
    assert turned.parts == (image, TextPart(text="Describe it.", role="user"),
                            TextPart(text="a red circle", role="assistant"))
    assert turned.meta == {"locator": "a.tar#c1", "prompted_from": "caption"}


def test_text_parts_join_in_order_and_images_lead():
    first, second = ImagePart(data=image_bytes(shade=1)), ImagePart(data=image_bytes(shade=2))
    sample = _caption(TextPart(text="line one"), first, TextPart(text="line two"), second,
                      kind="ocr")
    turned = as_conversation(sample, "Read.")
    assert turned.parts == (first, second, TextPart(text="Read.", role="user"),
                            TextPart(text="line one\nline two", role="assistant"))


def test_a_sample_without_text_is_rejected_and_other_kinds_refused():
    with pytest.raises(RecordRejected) as info:
        as_conversation(_caption(ImagePart(data=image_bytes()), kind="ocr"), "Read.")
    assert info.value.reason == "no_content"
    with pytest.raises(ValueError, match="not 'text'"):
        as_conversation(_caption(TextPart(text="prose"), kind="text"), "Read.")


def _code_tar(tmp_path, code: str):
    label = content.code_label(code, np.random.default_rng(0))
    png = png_bytes(content.draw_code(*label))
    annotation = json.dumps({"ocr_annotation": {"text": [code]}}).encode()
    return png, write_tar(tmp_path / "rt-0000.tar", [("k1.png", png), ("k1.json", annotation),
                                                     ("k2.png", b"not a png"),
                                                     ("k2.json", b'{"ocr_annotation": {}}')])


def test_a_prompted_ocr_record_trains_exactly_the_eval_question(tmp_path):
    """The high-res stage's labels, prompted with the eval's question, are token for token
    the OCR eval's documents: what the stage teaches is where eval asks for it."""
    png, tar = _code_tar(tmp_path, "4071")
    source = open_source(spec("renderedtext", tar, prompt=OCR_QUESTION))
    items = [item for unit in source.units() for item in read_clean(source, unit)]
    assert [getattr(i, "reason", "sample") for i in items] == ["sample", "missing_field"]
    bytes_tok = load_tokenizer("bytes")
    row, = prepare_record(items[0], HIGHRES, bytes_tok, tokens_per_tile=16, seq_len=570,
                          loss="all", on_overflow="reject")
    setup = EvalSetup(tokenizer=bytes_tok, policy=HIGHRES, tokens_per_tile=16, seq_len=570,
                      device=torch.device("cpu"))
    eval_doc = render_example(setup, png, [(OCR_QUESTION, "user"), ("4071", "assistant")], "sft")
    assert np.frombuffer(row["ids"], "<i4").tolist() == eval_doc.ids.tolist()
    assert np.frombuffer(row["loss"], "u1").tolist() == eval_doc.loss.tolist()
    supervised = np.frombuffer(row["ids"], "<i4")[np.frombuffer(row["loss"], "u1") == 1]
    assert bytes_tok.decode(supervised[:4].tolist()) == "4071" and len(supervised) == 5


def test_without_a_prompt_the_record_stays_a_transcript(tmp_path):
    _, tar = _code_tar(tmp_path, "4071")
    source = open_source(spec("renderedtext", tar))
    first = next(read_clean(source, source.units()[0]))
    assert first.kind == "ocr" and first.parts[1] == TextPart(text="4071")


def _recipe(tmp_path, **labels):
    data = {"name": "ocr", "seed": 1, "seq_len": 570, "image_tokens_per_tile": 16,
            "sources": {"labels": {"format": "renderedtext", "uri": "/data/rt-*.tar", **labels},
                        "hub": {"format": "hf", "uri": "org/labels", "as_format": "renderedtext",
                                **labels}},
            "stages": {"highres": {"budget": {"tokens": 1000},
                                   "image": {"preset": "idefics3", "longest_edge": 256,
                                             "tile": 64},
                                   "mixture": {"labels": 1, "hub": 1}}}}
    path = tmp_path / f"recipe-{len(labels)}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path)


def test_the_prompt_is_parsed_for_hf_readers_too_and_keys_the_unit_cache(tmp_path):
    prompted, plain = _recipe(tmp_path, prompt=OCR_QUESTION), _recipe(tmp_path)
    assert prompted.sources["hub"].prompt == OCR_QUESTION
    assert plain.sources["labels"].prompt is None
    keys = [unit_key(r, "highres", "labels", "/data/rt-0.tar") for r in (prompted, plain)]
    assert keys[0] != keys[1]
