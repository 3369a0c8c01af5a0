"""Stage policy on real modules, per architecture: the vision / connector / LM groups are what
they say (perturbing one moves exactly the outputs it should), `trainable` and `lr` act on
them, LoRA wraps the right layers, every trainable parameter gets a gradient even from a
batch without images (DDP's requirement), parameters no gradient can reach are frozen, and
the blocks and FLOP counts the parallel layer and MFU read."""
from __future__ import annotations

import pytest
import torch
from hf_fixtures import built, composed_setup, model_setup
from test_train_hf_packing import doc_alone, sequences

from mixdata.loading.families import family_collator
from mixdata.manifest import read_manifest
from mixdata.train.config import ModuleLR, StageTrain, Trainable
from mixdata.train.hf.feed import MATMUL, HFFeed, hf_flops, matmul_params
from mixdata.train.hf.load import compose, load_pretrained
from mixdata.train.hf.modes import apply_modes, parameter_groups
from mixdata.train.hf.spec import ComposedModelSpec, ConnectorSpec
from mixdata.train.hf.wrapper import HFTrainModel
from mixdata.train.lora import LoRALinear

KINDS = ["idefics3", "smolvlm", "llava-next", "qwen2vl", "qwen2.5vl", "internvl",
         "composed-clip"]
BLOCKS = {"idefics3": {"Idefics3EncoderLayer", "LlamaDecoderLayer"},
          "smolvlm": {"SmolVLMEncoderLayer", "LlamaDecoderLayer"},
          "llava-next": {"CLIPEncoderLayer", "LlamaDecoderLayer"},
          "qwen2vl": {"Qwen2VLVisionBlock", "Qwen2VLDecoderLayer"},
          "qwen2.5vl": {"Qwen2_5_VLVisionBlock", "Qwen2_5_VLDecoderLayer"},
          "internvl": {"InternVLVisionLayer", "Qwen2DecoderLayer"},
          "composed-clip": {"CLIPEncoderLayer", "Qwen2DecoderLayer"}}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """kind -> (a function making a fresh model, a family batch with images, one without)."""
    out = {}
    for kind in KINDS:
        root = tmp_path_factory.mktemp(kind)
        if kind == "composed-clip":
            setup, parts = composed_setup(root, tower="clip", lm="qwen2")
            shards = built(setup, root, add_tokens=True)
            tok = setup.tokenizer(add_tokens=True)
            spec = ComposedModelSpec(**parts, connector=ConnectorSpec())

            def make(spec=spec, tok=tok):
                return compose(spec, tok, seed=0, attention="sdpa")
        else:
            setup = model_setup(kind, root / "model")
            shards = built(setup, root)

            def make(folder=setup.folder):
                return load_pretrained(folder, "sdpa")
        collator = family_collator(setup.family, read_manifest(shards), str(shards))
        seqs = sequences(shards)
        with_images = collator.collate([collator.cut(s) for s in seqs if s.images][:2])
        text_doc = next(doc_alone(s, d) for s in seqs for d in range(len(s.docs) - 1)
                        if not any(m["doc"] == d for m in s.meta["images"]))
        out[kind] = (make, with_images, collator.collate([collator.cut(text_doc)]))
    return out


def logits(model: HFTrainModel, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**HFFeed().inputs(batch))


@pytest.mark.parametrize("kind", KINDS)
def test_groups_move_exactly_their_outputs(kinds, kind):
    make, with_images, text = kinds[kind]
    model = HFTrainModel(make()).eval()
    groups = model.group_parameters()
    assert sum(len(v) for v in groups.values()) == len(list(model.hf.parameters()))
    base_image, base_text = logits(model, with_images), logits(model, text)
    for group in groups:
        moved = HFTrainModel(make()).eval()
        for _, param in moved.group_parameters()[group]:
            with torch.no_grad():
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
        image_moves = not torch.allclose(logits(moved, with_images), base_image)
        text_moves = not torch.allclose(logits(moved, text), base_text)
        assert image_moves, (kind, group)
        assert text_moves == (group == "lm"), (kind, group)


@pytest.mark.parametrize("kind", KINDS)
def test_modes_and_learning_rates_act_on_the_groups(kinds, kind):
    make, with_images, _ = kinds[kind]
    model = HFTrainModel(make())
    stage = StageTrain(trainable=Trainable(vision="lora", connector="frozen", lm="full"),
                       lr=ModuleLR(vision=1e-3, lm=2e-3))
    unreachable = apply_modes(model, stage, seed=3)
    groups = model.group_parameters()
    vision = dict(groups["vision"])
    adapters = [n for n in vision if n.endswith(("lora_a", "lora_b"))]
    assert adapters and all(vision[n].requires_grad == (n in adapters and n not in unreachable)
                            for n in vision)
    assert not any(p.requires_grad for _, p in groups["connector"])
    assert all(p.requires_grad or n in unreachable for n, p in groups["lm"])
    wrapped = [m for n, m in model.hf.named_modules() if isinstance(m, LoRALinear)]
    assert all(model.arch.group_of(n + ".") == "vision"
               for n, m in model.hf.named_modules() if isinstance(m, LoRALinear))
    assert len(wrapped) == len(adapters) // 2
    named = {g["name"]: g for g in parameter_groups(model, stage, default_lr=9.0)}
    assert {named[n]["lr"] for n in named if n.startswith("vision")} == {1e-3}
    assert {named[n]["lr"] for n in named if n.startswith("lm")} == {2e-3}
    assert not [n for n in named if n.startswith("connector")]
    before = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
    optimizer = torch.optim.SGD([p for g in named.values() for p in g["params"]], lr=0.1)
    model.train()
    out = model(**HFFeed().inputs(with_images))
    out.float().logsumexp(-1).mean().backward()
    optimizer.step()
    for name, param in model.hf.named_parameters():
        moved = not torch.equal(before[name], param)
        group = model.arch.group_of(name)
        if group == "connector" or (group == "vision" and name not in adapters):
            assert not moved, name
    assert any(not torch.equal(before[n], dict(model.hf.named_parameters())[n])
               for n in adapters if n.endswith("lora_b"))


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_without_images_reaches_every_trainable_parameter(kinds, kind):
    make, _, text = kinds[kind]
    model = HFTrainModel(make())
    unreachable = apply_modes(model, StageTrain(), seed=0)  # everything full
    model.train()
    model(**HFFeed().inputs(text)).float().logsumexp(-1).mean().backward()
    missing = [n for n, p in model.hf.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    if kind == "llava-next":  # vision_feature_layer -2: the last CLIP layer never counts
        assert any(".layers.1." in n for n in unreachable) and \
            any("post_layernorm" in n for n in unreachable)
    if kind == "composed-clip":  # CLIP's post-layernorm only feeds its pooled output
        assert unreachable and all("post_layernorm" in n for n in unreachable)
    if kind in ("idefics3", "smolvlm", "qwen2vl", "qwen2.5vl", "internvl"):
        assert unreachable == []


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_and_flop_counts(kinds, kind):
    make, with_images, _ = kinds[kind]
    model = HFTrainModel(make())
    text = model.hf.config.get_text_config()
    blocks = model.transformer_blocks()
    assert len(blocks) == model.vision_facts.layers + text.num_hidden_layers
    assert set(model.block_classes()) == BLOCKS[kind]
    counts = matmul_params(model)
    assert sum(counts.values()) == sum(m.weight.numel() for m in model.hf.modules()
                                       if isinstance(m, MATMUL))
    apply_modes(model, StageTrain(trainable=Trainable(vision="frozen", connector="full",
                                                      lm="full")), seed=0)
    flops = hf_flops(model)
    assert flops.factors == {"vision": 2, "connector": 6, "lm": 6}
    assert flops.step_flops(with_images.stats, image_tokens=10) > \
        6 * flops.lm_params * with_images.stats.num_tokens
