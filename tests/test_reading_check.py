"""tools/reading_check.py scores the code's digits in each layout, and only them."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

from mixdata.demo import content
from mixdata.demo.files import png_bytes
from mixdata.image import ImagePolicy
from mixdata.tokens import load_tokenizer
from mixdata.train.config import ModelSpec
from mixdata.train.evaluate import EvalSetup, score_docs
from mixdata.train.model import VLM, model_config

TOOL = Path(__file__).resolve().parents[1] / "tools" / "reading_check.py"
spec = importlib.util.spec_from_file_location("reading_check", TOOL)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)

TOKENIZER = load_tokenizer("bytes")
SETUP = EvalSetup(tokenizer=TOKENIZER, device=torch.device("cpu"), tokens_per_tile=16,
                  seq_len=570, policy=ImagePolicy(preset="idefics3", longest_edge=256, tile=64,
                                                  upscale=False))


def _image(code: str) -> bytes:
    return png_bytes(content.draw_code(*content.code_label(code, np.random.default_rng(1))))


def test_each_layout_targets_the_code_first_and_the_gap_sits_before_it():
    image = _image("4071")
    docs = {layout: check.layout_doc(SETUP, image, "4071", layout)
            for layout in ("label", "label+gap", "answer")}
    for layout, doc in docs.items():
        supervised = doc.ids[doc.loss == 1]
        assert TOKENIZER.decode(supervised[:4].tolist()) == "4071", layout
    label, gapped = docs["label"], docs["label+gap"]
    first = int(np.nonzero(label.loss)[0][0])
    assert int(np.nonzero(gapped.loss)[0][0]) == first + len(TOKENIZER.encode(check.GAP + "\n"))
    answer = docs["answer"]
    assert int(np.nonzero(answer.loss)[0][0]) > first + len(TOKENIZER.encode("What number"))


def test_digit_hits_are_one_bool_per_digit_and_follow_the_arg_max():
    torch.manual_seed(0)
    model = VLM(model_config(ModelSpec(preset="tiny"), TOKENIZER.vocab_size)).eval()
    docs = [check.layout_doc(SETUP, _image(code), code, "answer") for code in ("4071", "9382")]
    hits = check.digit_hits(model, SETUP, docs, 4)
    assert hits.shape == (2, 4) and hits.dtype == bool
    # the eval's own count: arg-max hits among an answer's targets but its closing <|end|>
    assert hits.sum(1).tolist() == [right for *_, right in score_docs(model, SETUP, docs)]
