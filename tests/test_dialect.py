"""What every dialect shares: recipe schema, processor-config checks, missing and added
tokens, rejected records, overflow, the manifest record, remote folders, and the extra.

The per-family equality with transformers' processors lives in test_dialect_<family>.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from dialect_fixtures import (
    CONVERSATIONS,
    Setup,
    image_bank,
    img,
    mixdata_docs,
    sft_sample,
    train_bpe,
    txt,
    write_tokenizer,
)
from dialect_shards import build_stage_for

from mixdata.cli import main
from mixdata.errors import MixdataError, RecipeError, RecordRejected
from mixdata.image import ImagePolicy
from mixdata.manifest import read_manifest
from mixdata.recipe import parse_recipe
from mixdata.sample import Sample, TextPart
from mixdata.tokens import load_tokenizer
from mixdata.tokens.dialect import Dialect, check_dialect

ROOT = Path(__file__).resolve().parent.parent
QWEN_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                 "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|>"
                 "<|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|image_pad|>"]


def qwen_folder(folder: Path, template: str = QWEN_TEMPLATE, specials=QWEN_SPECIALS,
                processor: dict | None = None, image: dict | None = None) -> Path:
    write_tokenizer(folder, train_bpe(5, 330), specials=list(specials),
                    tokenizer_class="PreTrainedTokenizerFast", eos="<|im_end|>",
                    pad="<|endoftext|>", template=template)
    if processor is not None:
        (folder / "processor_config.json").write_text(json.dumps(processor))
    if image is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(image))
    return folder


def qwen_setup(folder: Path) -> Setup:
    return Setup("qwen2vl", folder, None, ImagePolicy(preset="qwen2vl", max_pixels=28 * 28 * 16),
                 1)


def recipe(tokenizer, stages=None, **top) -> dict:
    stages = stages or {"sft": {"image": {"preset": "qwen2vl"}, "mixture": {"chat": 1}}}
    return {"tokenizer": tokenizer, "seq_len": 256, "image_tokens_per_tile": 4,
            "sources": {"chat": {"format": "chat-messages", "uri": "/nowhere/chat.jsonl"}},
            "stages": stages, **top}


# --- recipes ------------------------------------------------------------------------------

def test_tokenizer_schema_and_family_rules(tmp_path):
    folder = str(tmp_path)
    parsed = parse_recipe(recipe({"path": folder, "add_tokens": True}))
    assert (parsed.tokenizer, parsed.add_tokens, parsed.family) == (folder, True, "qwen2vl")
    assert parse_recipe(recipe("bytes", {"s": {"mixture": {"chat": 1}}})).family is None
    cases = [
        (recipe({"path": folder, "add_token": True}), "tokenizer.add_token"),
        (recipe({"path": "bytes", "add_tokens": True}, {"s": {"mixture": {"chat": 1}}}),
         "tokenizer.add_tokens"),
        (recipe(folder, {"s": {"mixture": {"chat": 1}}}), "stages.s.image.preset"),
        (recipe(folder, {"a": {"image": {"preset": "qwen2vl"}, "mixture": {"chat": 1}},
                         "b": {"image": {"preset": "internvl"}, "mixture": {"chat": 1}}}),
         "stages.b.image.preset"),
    ]
    for raw, key in cases:
        with pytest.raises(RecipeError) as err:
            parse_recipe(raw)
        assert err.value.key == key, err.value


def test_processor_config_mismatch_names_the_key_and_value(tmp_path, capsys):
    folder = qwen_folder(tmp_path / "tok", image={"min_pixels": 3136, "max_pixels": 12544,
                                                  "patch_size": 14, "merge_size": 2,
                                                  "resample": 3, "image_mean": [0.5] * 3,
                                                  "image_std": [0.5] * 3})
    ok = {"sft": {"image": {"preset": "qwen2vl", "max_pixels": 12544}, "mixture": {"chat": 1}}}
    check_dialect(parse_recipe(recipe(str(folder), ok)))
    bad = {"sft": {"image": {"preset": "qwen2vl"}, "mixture": {"chat": 1}}}
    with pytest.raises(RecipeError) as err:
        check_dialect(parse_recipe(recipe(str(folder), bad)))
    assert err.value.key == "stages.sft.image.max_pixels" and "12544" in str(err.value)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(str(folder), bad)))
    assert main(["validate", str(path)]) == 2
    assert "stages.sft.image.max_pixels: 12544" in capsys.readouterr().err


def test_image_seq_len_is_checked_against_the_processor_config(tmp_path):
    folder = tmp_path / "tok"
    markers = [f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)]
    specials = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>",
                *markers]
    write_tokenizer(folder, train_bpe(5, 330), specials=specials,
                    tokenizer_class="PreTrainedTokenizerFast", eos="<end_of_utterance>",
                    pad="<image>")
    (folder / "processor_config.json").write_text(json.dumps({"image_seq_len": 9}))
    stages = {"s": {"image": {"preset": "idefics3", "longest_edge": 128, "tile": 32},
                    "mixture": {"chat": 1}}}
    with pytest.raises(RecipeError) as err:
        check_dialect(parse_recipe(recipe(str(folder), stages)))
    assert err.value.key == "image_tokens_per_tile" and "9" in str(err.value)


def test_shipped_smolvlm_recipe_validates_offline(capsys):
    assert main(["validate", str(ROOT / "recipes" / "smolvlm.yaml")]) == 0
    out = capsys.readouterr().out
    assert "dialect: idefics3" in out and "checked when a stage is built" in out


# --- tokens the family needs ----------------------------------------------------------------

def test_a_missing_family_token_is_named_and_add_tokens_adds_it(tmp_path):
    folder = qwen_folder(tmp_path / "tok", specials=QWEN_SPECIALS[:-1])  # no <|image_pad|>
    with pytest.raises(MixdataError, match=r"<\|image_pad\|>.*add_tokens: true"):
        load_tokenizer(str(folder), family="qwen2vl")
    tok = load_tokenizer(str(folder), family="qwen2vl", add_tokens=True)
    assert list(tok.added_tokens) == ["<|image_pad|>"]
    assert tok.added_tokens["<|image_pad|>"] == tok.image_id == tok.vocab_size - 1
    setup = qwen_setup(folder)
    doc, = mixdata_docs(setup, sft_sample(CONVERSATIONS[2], image_bank()), tokenizer=tok)
    assert (doc.ids == tok.image_id).sum() == doc.images[0].length > 0


def test_add_tokens_is_recorded_in_the_manifest(tmp_path):
    folder = qwen_folder(tmp_path / "tok", specials=QWEN_SPECIALS[:-1])
    out, _ = build_stage_for(qwen_setup(folder), tmp_path,
                             tokenizer={"path": str(folder), "add_tokens": True})
    manifest = json.loads((out / "manifest.json").read_text())
    dialect = Dialect.from_json(manifest["dialect"])
    assert dialect.family == "qwen2vl" and dialect.added_tokens == {
        "<|image_pad|>": dialect.special_ids["image"]}
    assert read_manifest(out).dialect == dialect
    assert dialect.chat_template_sha256 and dialect.pad_is_eos is False
    assert Dialect.from_json(dialect.to_json()) == dialect
    for broken in ({**dialect.to_json(), "extra": 1}, {**dialect.to_json(), "format": "x"},
                   {k: v for k, v in dialect.to_json().items() if k != "family"}):
        with pytest.raises(ValueError):
            Dialect.from_json(broken)


# --- records whose replies cannot be found --------------------------------------------------

@pytest.mark.parametrize("change,why", [
    # the reply is rewritten: its text is nowhere in the prompt
    ("{{ c['text'] | upper }}", "does not write reply"),
    # earlier turns render differently from the last one (as some reasoning templates do)
    ("{% if is_last %}{{ c['text'] }}{% else %}{{ c['text'] }}.{% endif %}", "renders message"),
])
def test_a_reply_the_template_rewrites_is_rejected_with_a_reason(tmp_path, change, why):
    template = QWEN_TEMPLATE.replace("{{ c['text'] }}", change).replace(
        "{% for message in messages %}", "{% for message in messages %}"
        "{% set is_last = loop.last %}")
    folder = qwen_folder(tmp_path / "tok", template=template)
    sample = sft_sample(CONVERSATIONS[3], image_bank())
    with pytest.raises(RecordRejected) as err:
        mixdata_docs(qwen_setup(folder), sample)
    assert err.value.reason == "sft_spans" and why in err.value.message


def test_a_reply_spelled_inside_its_header_is_located_by_probing(tmp_path):
    """A template without a generation prompt whose assistant header holds the reply's
    letters ("Assist" in "Assistant: "): the reply is where the template writes reply text."""
    template = ("{% for message in messages %}{% if message['role'] == 'assistant' %}"
                "Assistant: {% else %}User: {% endif %}{% for c in message['content'] %}"
                "{{ c['text'] }}{% endfor %}<|im_end|>\n{% endfor %}")
    folder = qwen_folder(tmp_path / "tok", template=template)
    conversation = [{"role": "user", "content": [txt("Say it.")]},
                    {"role": "assistant", "content": [txt("Assist")]},
                    {"role": "user", "content": [txt("Again.")]},
                    {"role": "assistant", "content": [txt("t")]}]
    setup = qwen_setup(folder)
    doc, = mixdata_docs(setup, sft_sample(conversation, image_bank()))
    tok = setup.tokenizer()
    supervised = [tok.decode(doc.ids[i:i + 1]) for i in np.flatnonzero(doc.loss)]
    assert "".join(supervised).replace(" ", "") == "Assist<|im_end|>t<|im_end|>"


def test_a_template_that_drops_images_is_rejected(tmp_path):
    folder = qwen_folder(tmp_path / "tok", template=QWEN_TEMPLATE.replace(
        "<|vision_start|><|image_pad|><|vision_end|>", ""))
    with pytest.raises(RecordRejected) as err:
        mixdata_docs(qwen_setup(folder), sft_sample(CONVERSATIONS[2], image_bank()))
    assert err.value.reason == "chat_template" and "0 image placeholders for 1" in str(err.value)


# --- overflow -----------------------------------------------------------------------------

def test_long_documents_are_chunked_or_trimmed_at_part_boundaries(tmp_path):
    folder = qwen_folder(tmp_path / "tok")
    setup, tok = qwen_setup(folder), None
    tok = setup.tokenizer()
    long_text = Sample(id="t", source="s", kind="text",
                       parts=(TextPart(text=" ".join(["the red square"] * 120)),))
    chunks = mixdata_docs(setup, long_text, seq_len=64, tokenizer=tok)
    whole, = mixdata_docs(setup, long_text, tokenizer=tok)
    assert len(chunks) > 2 and all(len(c.ids) <= 64 for c in chunks)
    assert np.concatenate([c.ids for c in chunks]).tolist() == whole.ids.tolist()
    images = image_bank()
    turns = [{"role": "user", "content": [img(0), txt("What is it?")]},
             {"role": "assistant", "content": [txt("A red square.")]},
             {"role": "user", "content": [img(3), txt(" ".join(["And then?"] * 40))]},
             {"role": "assistant", "content": [txt("More.")]}]
    full, = mixdata_docs(setup, sft_sample(turns, images), tokenizer=tok)
    first, = mixdata_docs(setup, sft_sample(turns[:2], images), tokenizer=tok)
    trimmed, = mixdata_docs(setup, sft_sample(turns, images), seq_len=len(first.ids) + 5,
                            tokenizer=tok)
    assert len(full.ids) > len(trimmed.ids) and trimmed.ids.tolist() == first.ids.tolist()
    assert trimmed.loss.tolist() == first.loss.tolist() and len(trimmed.images) == 1
    with pytest.raises(RecordRejected, match="too_long"):
        mixdata_docs(setup, sft_sample(turns, images), seq_len=10, tokenizer=tok)


# --- the optional extra, remote folders -----------------------------------------------------

def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=False)


def test_building_with_bytes_never_imports_transformers(tmp_path):
    from build_fixtures import write_corpus, write_recipe

    path = write_recipe(write_corpus(tmp_path, n_captions=6, n_text=6, n_sft=4))
    code = "\n".join([
        "import sys", "from mixdata.recipe import load_recipe",
        "from mixdata.building import build_stage",
        f"build_stage(load_recipe({str(path)!r}), 'pretrain', out={str(tmp_path / 'out')!r},"
        " progress=False)",
        "print('transformers' in sys.modules)"])
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_folder_without_transformers_installed_says_how_to_get_it(tmp_path):
    folder = qwen_folder(tmp_path / "tok")
    code = "\n".join(["import sys", "sys.modules['transformers'] = None",
                      "from mixdata.tokens import load_tokenizer",
                      f"load_tokenizer({str(folder)!r}, family='qwen2vl')"])
    done = _python(code)
    assert done.returncode != 0 and "pip install mixdata[hf]" in done.stderr


def test_a_remote_folder_is_copied_once_keyed_by_content(tmp_path, monkeypatch):
    import fsspec

    folder = qwen_folder(tmp_path / "tok")
    memory = fsspec.filesystem("memory")
    for path in folder.iterdir():
        memory.pipe(f"/models/tok/{path.name}", path.read_bytes())
    monkeypatch.setenv("MIXDATA_CACHE", str(tmp_path / "cache"))
    remote = load_tokenizer("memory://models/tok", family="qwen2vl")
    local = load_tokenizer(str(folder), family="qwen2vl")
    assert remote.sha256 == local.sha256 and remote.identity == "memory://models/tok"
    copies = list((tmp_path / "cache" / "tokenizers").iterdir())
    assert len(copies) == 1 and (copies[0] / "tokenizer.json").is_file()
    parsed = parse_recipe(recipe("memory://models/tok"))
    assert "checked when a stage is built" in check_dialect(parsed, fetch=False)
    memory.pipe("/models/tok/chat_template.jinja", b"{{ messages }}")
    load_tokenizer("memory://models/tok", family="qwen2vl")
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 2


def test_model_tokenizer_pickles_and_never_emits_specials_from_text(tmp_path):
    import pickle

    tok = load_tokenizer(str(qwen_folder(tmp_path / "tok")), family="qwen2vl")
    again = pickle.loads(pickle.dumps(tok))
    assert again.sha256 == tok.sha256 and again.roles == tok.roles
    ids = tok.encode("<|image_pad|><|im_end|> text")
    assert tok.image_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == "<|image_pad|><|im_end|> text"
