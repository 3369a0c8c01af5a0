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


class _NextTokenOracle(torch.nn.Module):
    """Predicts each next input token, except that it never says `7`: its hits are known."""

    def image_features(self, pixels):
        return torch.zeros(pixels.shape[0], 16, 8)

    def forward(self, input_ids, *args, image_features=None):
        following = torch.roll(input_ids, -1, dims=1)
        following[following == TOKENIZER.encode("7")[0]] = 0
        return torch.nn.functional.one_hot(following.long(), TOKENIZER.vocab_size).float()


def test_digit_hits_are_one_bool_per_digit_and_follow_the_arg_max():
    docs = [check.layout_doc(SETUP, _image(code), code, layout)
            for code, layout in (("4071", "answer"), ("9382", "label+gap"), ("1777", "label"))]
    oracle = _NextTokenOracle()
    hits = check.digit_hits(oracle, SETUP, docs, 4)
    assert hits.dtype == bool
    assert hits.tolist() == [[True, True, False, True], [True] * 4, [True, False, False, False]]
    # the eval's own count: arg-max hits among an answer's targets but its closing <|end|>
    assert hits[:1].sum(1).tolist() == [right for *_, right in score_docs(oracle, SETUP, docs[:1])]


def test_a_fresh_model_is_scored_without_error():
    torch.manual_seed(0)
    model = VLM(model_config(ModelSpec(preset="tiny"), TOKENIZER.vocab_size)).eval()
    docs = [check.layout_doc(SETUP, _image(code), code, "answer") for code in ("4071", "9382")]
    assert check.digit_hits(model, SETUP, docs, 4).shape == (2, 4)
