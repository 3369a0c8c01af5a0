"""Eval on a real (tiny) held-out split written by the demo generator: metrics in range,
chance right, greedy decoding and the teacher-forced exact match agree, table and JSON."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from test_train_model import PER_TILE, TILE, tiny_config

from mixdata.demo.evalset import write_eval
from mixdata.image import ImagePolicy
from mixdata.tokens import load_tokenizer
from mixdata.tokens.tokenizer import END
from mixdata.train.evaluate import (
    EvalSetup,
    evaluate,
    greedy_decode,
    prompt_of,
    read_split,
    score_docs,
    sft_doc,
)
from mixdata.train.loop import model_inputs
from mixdata.train.model import token_losses
from mixdata.train.report import format_table, record_eval
from mixdata.train.stage import init_model


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalsplit")
    write_eval(root, scenes=3, words=3, rng=np.random.default_rng(0))
    return root / "eval"


@pytest.fixture(scope="module")
def setup():
    tokenizer = load_tokenizer("bytes")
    return EvalSetup(tokenizer=tokenizer, policy=ImagePolicy(preset="none", max_side=TILE),
                     tokens_per_tile=PER_TILE, seq_len=256, device=torch.device("cpu"), batch_size=4)


def byte_model(setup):
    config = tiny_config()
    config = dataclasses.replace(config, lm=dataclasses.replace(
        config.lm, vocab_size=setup.tokenizer.vocab_size))
    return init_model(config, seed=0)


def test_metrics_are_in_range_and_chance_is_exact(split, setup):
    results = evaluate(byte_model(setup), setup, split)
    rows = read_split(split, "vqa", None)
    assert results["vqa"]["n"] == len(rows) == 6
    assert results["vqa"]["chance"] == pytest.approx(np.mean([1 / len(r["choices"]) for r in rows]))
    assert 0 <= results["vqa"]["accuracy"] <= 1
    ocr = results["ocr"]  # an untrained model reads nothing
    assert (ocr["exact_match"], ocr["n"]) == (0.0, 3) and 0 <= ocr["token_accuracy"] < 0.5
    # uniform guessing over ~280 byte ids costs ~ln(280); an untrained model is near that
    assert 3 < results["caption"]["loss"] < 8


def test_vqa_picks_the_choice_with_the_highest_likelihood(split, setup):
    model = byte_model(setup)
    row = read_split(split, "vqa", 1)[0]
    scores = score_docs(model, setup, [sft_doc(setup, split, row, c) for c in row["choices"]])
    favourite = row["choices"][int(np.argmax([s[0] for s in scores]))]
    forced = dict(row, answer=favourite)
    (split.parent / "one").mkdir(exist_ok=True)
    (split.parent / "one" / "vqa.jsonl").write_text(json.dumps(forced) + "\n")
    (split.parent / "one" / "images").mkdir(exist_ok=True)
    image = split / row["image"]
    (split.parent / "one" / row["image"]).write_bytes(image.read_bytes())
    assert evaluate(model, setup, split.parent / "one", tasks=("vqa",))["vqa"]["accuracy"] == 1.0


def test_score_matches_the_training_loss(split, setup):
    model = byte_model(setup).eval()
    row = read_split(split, "ocr", 1)[0]
    doc = sft_doc(setup, split, row, row["answer"])
    logprob, count, _, _ = score_docs(model, setup, [doc])[0]
    batch = setup.batch([doc])
    with torch.no_grad():
        summed, n = token_losses(model(*model_inputs(batch)), batch["labels"])
    assert n == count == len(row["answer"]) + 1  # the answer bytes and <|end|>
    assert -logprob == pytest.approx(float(summed), rel=1e-5)


def test_greedy_decoding_agrees_with_teacher_forced_exact_match(split, setup):
    """Overfit one OCR example so greedy decoding reads it; the other stays unread."""
    model = byte_model(setup)
    rows = read_split(split, "ocr", None)
    docs = [sft_doc(setup, split, r, r["answer"]) for r in rows]
    batch = setup.batch([docs[0]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        model.train()
        summed, n = token_losses(model(*model_inputs(batch)), batch["labels"])
        (summed / n).backward()
        optimizer.step()
        optimizer.zero_grad()
    scores = score_docs(model, setup, docs)
    hits = [hit for _, _, hit, _ in scores]
    # the read example has every answer token right (its count less the closing <|end|>)
    assert scores[0][3] == scores[0][1] - 1 == len(rows[0]["answer"])
    results = evaluate(model, setup, split, tasks=("ocr",))["ocr"]
    answer_tokens = sum(len(r["answer"]) for r in rows)
    assert results["token_accuracy"] == sum(s[3] for s in scores) / answer_tokens
    assert results["token_accuracy"] >= len(rows[0]["answer"]) / answer_tokens
    end = setup.tokenizer.special_id(END)
    for doc, row, hit in zip(docs, rows, hits):
        generated = greedy_decode(model, setup, prompt_of(doc), max_new_tokens=16)
        decoded = generated[:-1] if generated and generated[-1] == end else None
        reads = decoded is not None and setup.tokenizer.decode(decoded) == row["answer"]
        assert reads == hit
    assert hits[0] and not all(hits)


def test_vqa_accuracy_by_kind_counts_each_kind_on_its_own(split, setup, tmp_path):
    model = byte_model(setup)
    rows = read_split(split, "vqa", None)
    kinds = {r["kind"] for r in rows}
    assert kinds <= {"colour", "shape", "position", "count"} and len(kinds) >= 2
    chosen = rows[0]["kind"]
    forced = []
    for row in rows:  # the model's favourite is right for one kind and wrong for the rest
        scores = [s[0] for s in score_docs(model, setup, [sft_doc(setup, split, row, c)
                                                          for c in row["choices"]])]
        pick = np.argmax(scores) if row["kind"] == chosen else np.argmin(scores)
        forced.append(dict(row, answer=row["choices"][int(pick)]))
    folder = tmp_path / "forced"
    (folder / "images").mkdir(parents=True)
    for row in rows:
        (folder / row["image"]).write_bytes((split / row["image"]).read_bytes())
    (folder / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in forced))
    vqa = evaluate(model, setup, folder, tasks=("vqa",))["vqa"]
    by_kind = vqa["by_kind"]
    assert sum(m["n"] for m in by_kind.values()) == vqa["n"] == len(rows)
    assert {k: m["accuracy"] for k, m in by_kind.items()} == {
        k: float(k == chosen) for k in kinds}
    assert vqa["accuracy"] == pytest.approx(by_kind[chosen]["n"] / len(rows))
    for kind, metrics in by_kind.items():
        of_kind = [r for r in rows if r["kind"] == kind]
        assert metrics["chance"] == pytest.approx(np.mean([1 / len(r["choices"]) for r in of_kind]))


def test_table_and_json(tmp_path):
    record_eval(tmp_path, "pretrain", {"vqa": {"accuracy": 0.25, "chance": 0.24, "n": 4},
                                       "caption": {"loss": 2.5, "n": 4}})
    record_eval(tmp_path, "sft", {"vqa": {"accuracy": 0.75, "chance": 0.24, "n": 4},
                                  "ocr": {"exact_match": 0.5, "n": 2}})
    table = json.loads((tmp_path / "eval.json").read_text())
    assert list(table) == ["pretrain", "sft"]
    text = format_table(table)
    assert "0.750" in text and "2.500" in text and text.splitlines()[2].split()[4] == "-"
    assert "by question kind" not in text  # no stage reports it
    record_eval(tmp_path, "sft", {"vqa": {"accuracy": 0.75, "chance": 0.24, "n": 4, "by_kind": {
        "colour": {"accuracy": 1.0, "chance": 1 / 6, "n": 2},
        "shape": {"accuracy": 0.5, "chance": 0.25, "n": 2}}}})
    lines = format_table(json.loads((tmp_path / "eval.json").read_text())).splitlines()
    assert lines[-2] == "VQA accuracy by question kind (chance):"
    assert lines[-1].split() == ["sft", "colour", "1.000", "(0.17)", "shape", "0.500", "(0.25)"]


def tiny_text_recipe(*stages: str):
    """A recipe with the tiny model and one text source per stage; nothing is read from it."""
    from mixdata.recipe import parse_recipe

    return parse_recipe({"name": "r", "seq_len": 64, "image_tokens_per_tile": 16,
                         "sources": {"t": {"format": "jsonl-text", "uri": "/none/*.jsonl"}},
                         "stages": {name: {"mixture": {"t": 1}} for name in stages},
                         "train": {"model": "tiny"}}, file="r.yaml")


def test_untrained_model_is_the_seeded_initial_weights_and_trained_model_loads_saved_ones(
        tmp_path):
    from mixdata.train.checkpoint import save_weights
    from mixdata.train.config import parse_train
    from mixdata.train.report import trained_model, untrained_model

    config, tokenizer = parse_train(tiny_text_recipe("pretrain")), load_tokenizer("bytes")
    first, again = untrained_model(config, tokenizer), untrained_model(config, tokenizer)
    other = untrained_model(config, tokenizer, seed=1)
    weights = {name: p.detach().clone() for name, p in first.state_dict().items()}
    assert not first.training
    assert all(torch.equal(weights[name], p) for name, p in again.state_dict().items())
    assert any(not torch.equal(weights[name], p) for name, p in other.state_dict().items())
    saved = tmp_path / "final.pt"
    save_weights(saved, other)
    loaded = trained_model(config, tokenizer, saved)
    assert not loaded.training
    assert all(torch.equal(p, other.state_dict()[name]) for name, p in loaded.state_dict().items())


def test_initial_seed_is_the_first_trained_stage_seed_of_the_run(tmp_path):
    from mixdata.train.config import parse_train
    from mixdata.train.lineage import stage_chain, stage_seeds
    from mixdata.train.model import model_config
    from mixdata.train.report import initial_seed
    from mixdata.train.run import _write_run_file

    recipe = tiny_text_recipe("pretrain", "highres", "sft")
    config = parse_train(recipe)
    model = model_config(config.model_spec, load_tokenizer("bytes").vocab_size)
    for skip, first_seed in (((), 3), (("pretrain",), 9)):
        chain = stage_chain(list(recipe.stages), skip)
        run = tmp_path / f"skip-{len(skip)}"
        seeds = stage_seeds(chain, 3, {"highres": 9})
        _write_run_file(run, recipe, config, model, chain, 3, seeds)
        assert initial_seed(run) == first_seed
