"""The bundled trainer on real models, one test per supported kind (Idefics3, SmolVLM,
LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, InternVL, and a SigLIP tower + Llama LM composed with
mixdata's connector), on
shards built in the model's dialect, two stages (pretrain -> sft):

- a few steps run and the loss falls;
- resume is exact: a run stopped after 2 steps and resumed gives the same losses, both
  stages, as the run straight through;
- sft (vision frozen, connector full, LM LoRA, per-module lr) changes exactly the right
  weights, with the lr ratios asked for;
- each `final/` is a save_pretrained folder that `AutoModelForImageTextToText` opens (with
  LoRA merged: no adapter keys), whose processor files load, whose tokenizer is the shards'
  dialect, and on which `generate` runs; sft starts from pretrain's `final/`.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from dialect_fixtures import CONVERSATIONS, hf_messages, image_bank, image_only
from hf_fixtures import COMPOSED_IMAGE, composed_setup, model_setup, setup_recipe, train_recipe_for
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

import mixdata.train.hf.composed  # noqa: F401 - registers the composed type with the auto classes
from mixdata.manifest import read_manifest
from mixdata.tokens.dialect import recipe_tokenizer
from mixdata.tokens.hf import load_model_tokenizer
from mixdata.train.config import parse_train
from mixdata.train.ddp import Dist
from mixdata.train.hf import run as hf_run
from mixdata.train.hf.arch import ARCHS
from mixdata.train.run import train_recipe

CPU = Dist(0, 1, torch.device("cpu"))
RELOAD = ("import sys; import mixdata.train.hf.composed; "
          "from transformers import AutoModelForImageTextToText, AutoProcessor; "
          "AutoModelForImageTextToText.from_pretrained(sys.argv[1]); "
          "AutoProcessor.from_pretrained(sys.argv[1])")
SFT = {"trainable": {"vision": "frozen", "connector": "full", "lm": "lora"},
       "lora": {"rank": 4, "alpha": 8}, "lr": {"connector": 6e-3, "lm": 2e-3}}


def recipe_of(kind: str, root):
    if kind == "composed":
        setup, parts = composed_setup(root)
        return setup, train_recipe_for(
            root, tokenizer={"path": parts["lm"], "add_tokens": True}, image=COMPOSED_IMAGE,
            tokens_per_tile=4, model={**parts, "connector": {"kind": "pixel_shuffle"}},
            steps=4, train_stages={"sft": SFT})
    setup = model_setup(kind, root / "model")
    return setup, setup_recipe(setup, root, steps=4, train_stages={"sft": SFT})


def losses(run_dir) -> list[tuple[str, int, float]]:
    with open(run_dir / "metrics.jsonl") as handle:
        return [(r["stage"], r["step"], r["loss"]) for r in map(json.loads, handle)]


def weights(folder) -> dict[str, torch.Tensor]:
    """The model's parameters by their names in the loaded model (the file may hold
    transformers' legacy names) after checking the file holds no LoRA adapter."""
    assert not [k for k in load_file(str(folder / "model.safetensors")) if "lora" in k]
    model = AutoModelForImageTextToText.from_pretrained(str(folder))
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def check_modes(arch, before: dict, after: dict) -> None:
    """sft: vision unchanged, connector changed, LM linears changed, embeddings unchanged."""
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    groups = {k: arch.group_of(k) for k in before}
    assert not {k for k in changed if groups[k] == "vision"}
    matrices = {k for k in before if groups[k] == "connector" and before[k].dim() >= 2}
    assert matrices and matrices <= changed
    lm_changed = {k for k in changed if groups[k] == "lm"}
    assert lm_changed and all(k.endswith("proj.weight") for k in lm_changed)
    assert not [k for k in lm_changed if "embed" in k or "lm_head" in k]


def generate_on(final, setup, kind: str) -> None:
    model = AutoModelForImageTextToText.from_pretrained(str(final)).eval()
    if kind in ("idefics3", "llava-next", "composed"):
        processor = AutoProcessor.from_pretrained(str(final))
    else:  # SmolVLM / Qwen2-VL / InternVL processors insist on a video processor: the
        # processor is made from final/'s own image processor, tokenizer, template and config
        images = type(setup.processor.image_processor).from_pretrained(str(final))
        options = json.loads((final / "processor_config.json").read_text())
        options = {k: v for k, v in options.items() if k != "processor_class"}
        processor = image_only(type(setup.processor).__mro__[1])(
            images, AutoTokenizer.from_pretrained(str(final)), None,
            chat_template=(final / "chat_template.jinja").read_text(), **options)
    conversation = [CONVERSATIONS[2][0]]
    inputs = processor.apply_chat_template(hf_messages(conversation, image_bank()),
                                           add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    prompt = inputs["input_ids"].shape[1]
    assert out.shape[0] == 1 and prompt < out.shape[1] <= prompt + 4


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["idefics3", "smolvlm", "llava-next", "qwen2vl", "qwen2.5vl",
                                  "internvl", "composed"])
def test_stages_train_resume_exactly_and_export(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # shards/<recipe>/<stage> under the test's folder
    setup, recipe = recipe_of(kind, tmp_path)
    starts = []
    real_load = hf_run.load_model

    def spy(spec, tokenizer, *, seed, init_from, device):
        starts.append(init_from)
        return real_load(spec, tokenizer, seed=seed, init_from=init_from, device=device)

    monkeypatch.setattr(hf_run, "load_model", spy)
    straight = train_recipe(recipe, out=tmp_path / "a", device="cpu", progress=False)
    assert starts == [None, straight / "pretrain" / "final"]
    record = losses(straight)
    pretrain = [loss for stage, _, loss in record if stage == "pretrain"]
    assert len(record) == 8 and pretrain[-1] < pretrain[0]

    config, tokenizer = parse_train(recipe), recipe_tokenizer(recipe)
    assert hf_run.run_stage(recipe, config, "pretrain", tmp_path / "b", CPU, tokenizer=tokenizer,
                            resume=False, progress=False, stop_after=2) is None
    resumed = train_recipe(recipe, out=tmp_path / "b", device="cpu", progress=False, resume=True)
    assert losses(resumed) == record

    arch = ARCHS[json.loads((straight / "sft" / "final" / "config.json").read_text())
                 ["model_type"]]
    check_modes(arch, weights(straight / "pretrain" / "final"), weights(straight / "sft" / "final"))
    lrs = json.loads((straight / "metrics.jsonl").read_text().splitlines()[-1])["lr"]
    assert {"connector", "lm"} <= set(lrs) <= {"connector", "connector.no_decay", "lm"}
    assert lrs["connector"] == pytest.approx(3 * lrs["lm"])

    final = straight / "sft" / "final"
    dialect = read_manifest(f"shards/{recipe.name}/sft").dialect
    assert load_model_tokenizer(str(final), recipe.family, grid=3).sha256 == \
        dialect.tokenizer_sha256
    generate_on(final, setup, kind)
    if kind == "composed":  # what the docs say, in a fresh interpreter
        subprocess.run([sys.executable, "-c", RELOAD, str(final)], check=True, timeout=300)
