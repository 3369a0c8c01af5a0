"""Real models in the `train:` schema, and the shards checked against the model before any
step (before any build, when the recipe already disagrees): each mismatch is a MixdataError
saying what to set or rebuild. Also model folders from fsspec URLs and the attention pick."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import fsspec
import pytest
import torch
from hf_fixtures import model_setup, setup_recipe
from test_dialect_idefics3 import smolvlm_setup

from mixdata.errors import MixdataError, RecipeError
from mixdata.recipe import parse_recipe
from mixdata.train.config import parse_train
from mixdata.train.hf import load as hf_load
from mixdata.train.hf.check import fit_vocabulary
from mixdata.train.hf.load import load_pretrained, local_folder, pick_attention
from mixdata.train.hf.spec import ComposedModelSpec, ConnectorSpec, HFModelSpec
from mixdata.train.run import train_recipe

BASE = {"name": "r", "seq_len": 64, "image_tokens_per_tile": 16,
        "sources": {"t": {"format": "jsonl-text", "uri": "/nowhere/*.jsonl"}},
        "stages": {"pretrain": {"mixture": {"t": 1}}}}


def parsed(model):
    return parse_train(parse_recipe({**BASE, "train": {"model": model}}, file="r.yaml"))


def test_real_model_specs_parse_and_errors_name_their_keys():
    config = parsed({"hf": "/m", "attention": "eager", "lr": 2e-5})
    assert config.model == HFModelSpec(hf="/m", attention="eager", lr=2e-5) and config.real_model
    composed = parsed({"vision": "/v", "lm": "/l", "vision_layer": -2,
                       "connector": {"kind": "perceiver", "latents": 32}}).model
    assert composed == ComposedModelSpec(vision="/v", lm="/l", vision_layer=-2,
                                         connector=ConnectorSpec(kind="perceiver", latents=32))
    assert parsed("tiny").model_label == "tiny" and not parsed("tiny").real_model
    tuned = parsed({"preset": "tiny", "vision_position": 0.5})
    assert tuned.model_label == "tiny (vision_position 0.5)"
    for model, key, expected in [
            ({"hf": 3}, "train.model.hf", "a string"),
            ({"hf": "/m", "attention": "fast"}, "train.model.attention", "sdpa"),
            ({"vision": "/v"}, "train.model.lm", "required"),
            ({"vision": "/v", "lm": "/l", "connector": {"shuffle": 0}},
             "train.model.connector.shuffle", "positive"),
            ({"hf": "/m", "preset": "tiny"}, "train.model.preset", "no such key")]:
        with pytest.raises(RecipeError) as info:
            parsed(model)
        assert info.value.key == key and expected in str(info.value), (model, str(info.value))


def test_validate_describes_a_real_model(tmp_path, capsys):
    from mixdata.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({**BASE, "train": {"model": {"hf": "/m"}}}))
    assert main(["validate", str(recipe), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "hf:/m"


@pytest.fixture(scope="module")
def idefics3(tmp_path_factory):
    return model_setup("idefics3", tmp_path_factory.mktemp("idefics3") / "model")


def refused(recipe, tmp_path, match: str) -> MixdataError:
    """train_recipe raises before building anything."""
    with pytest.raises(MixdataError, match=match) as info:
        train_recipe(recipe, out=tmp_path / "run", device="cpu", progress=False)
    assert not Path("shards").exists(), "a shard build ran before the check"
    return info.value


def test_mismatches_are_refused_before_any_build(idefics3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = setup_recipe(idefics3, tmp_path / "a")
    raw = recipe.raw
    wrong_tokens = parse_recipe({**raw, "image_tokens_per_tile": 9}, file="r.yaml")
    error = refused(wrong_tokens, tmp_path, "set image_tokens_per_tile: 4")
    assert "rebuild stage" in str(error)
    images = {**raw["stages"]["pretrain"]["image"], "tile": 48, "longest_edge": 144}
    wrong_tile = parse_recipe({**raw, "image_tokens_per_tile": 9, "stages": {
        name: {**stage, "image": images} for name, stage in raw["stages"].items()}},
        file="r.yaml")
    refused(wrong_tile, tmp_path, r"tile 48 px, the vision tower reads 32 px \(set image.tile: 32")
    other = smolvlm_setup(tmp_path / "smolvlm")  # the same family, another tokenizer
    wrong_tokenizer = parse_recipe({**raw, "tokenizer": str(other.folder)}, file="r.yaml")
    refused(wrong_tokenizer, tmp_path, "not the model's own tokenizer")
    text_only = parse_recipe({**raw, "tokenizer": "bytes", "stages": {
        name: {**stage, "image": {"preset": "none", "max_side": 32}}
        for name, stage in raw["stages"].items()}}, file="r.yaml")
    refused(text_only, tmp_path, "a real model trains on shards in its own dialect")


def test_family_and_image_token_mismatches_are_refused(idefics3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    llava = model_setup("llava-next", tmp_path / "llava")
    recipe = setup_recipe(idefics3, tmp_path / "a")
    other_model = parse_recipe({**recipe.raw, "train": {**recipe.raw["train"], "model": {
        "hf": str(llava.folder)}}}, file="r.yaml")
    refused(other_model, tmp_path, "in the idefics3 dialect but the model \\(llava_next\\) reads")
    config = json.loads((idefics3.folder / "config.json").read_text())
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in idefics3.folder.iterdir():
        (moved / path.name).write_bytes(path.read_bytes())
    (moved / "config.json").write_text(json.dumps({**config, "image_token_id": 3}))
    shifted = parse_recipe({**recipe.raw, "tokenizer": str(moved), "train": {
        **recipe.raw["train"], "model": {"hf": str(moved)}}}, file="r.yaml")
    refused(shifted, tmp_path, f"image token id {config['image_token_id']} in the shards, 3 in "
                               "the model config")


def test_embeddings_grow_only_for_added_tokens(idefics3):
    model = load_pretrained(idefics3.folder, "sdpa")
    rows = model.get_input_embeddings().weight.shape[0]
    dialect = _dialect(idefics3)
    assert not fit_vocabulary(model, dialect, where="here")
    grown = dataclasses.replace(dialect, vocab_size=rows + 3, added_tokens={"<x>": rows + 2})
    assert fit_vocabulary(model, grown, where="here")
    assert model.get_input_embeddings().weight.shape[0] == rows + 3
    with pytest.raises(MixdataError, match="beyond the model's"):
        fit_vocabulary(model, dataclasses.replace(dialect, vocab_size=rows + 9), where="here")


def _dialect(setup):
    from mixdata.tokens.dialect import model_dialect

    return model_dialect(setup.tokenizer(), setup.tokens_per_tile, setup.policy)


def test_model_folders_load_from_fsspec_urls_once(idefics3, monkeypatch, tmp_path):
    monkeypatch.setenv("MIXDATA_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    for path in idefics3.folder.iterdir():
        fs.pipe(f"/models/idefics3/{path.name}", path.read_bytes())
    url = "memory://models/idefics3"
    local = local_folder(url)
    assert local.is_relative_to(tmp_path / "cache") and local_folder(url) == local
    remote, direct = load_pretrained(local, "sdpa"), load_pretrained(idefics3.folder, "sdpa")
    for (name, a), (_, b) in zip(remote.named_parameters(), direct.named_parameters()):
        assert torch.equal(a, b), name
    with pytest.raises(MixdataError, match=r"holds no config\.json"):
        fs.pipe("/models/empty/readme.txt", b"x")
        local_folder("memory://models/empty")
    with pytest.raises(MixdataError, match="expected a save_pretrained folder"):
        local_folder(str(tmp_path))


def test_attention_pick(monkeypatch):
    assert pick_attention("auto", torch.device("cpu")) == "sdpa"
    assert pick_attention("eager", torch.device("cpu")) == "eager"
    real = importlib.util.find_spec
    installed = lambda name, *a: object() if name == "flash_attn" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(hf_load.importlib.util, "find_spec", installed)
    assert pick_attention("auto", torch.device("cuda")) == "flash_attention_2"
    assert pick_attention("auto", torch.device("cpu")) == "sdpa"
    monkeypatch.setattr(hf_load.importlib.util, "find_spec",
                        lambda name, *a: None if name == "flash_attn" else real(name, *a))
    assert pick_attention("auto", torch.device("cuda")) == "sdpa"
    with pytest.raises(MixdataError, match="needs the flash-attn package"):
        pick_attention("flash_attention_2", torch.device("cuda"))
