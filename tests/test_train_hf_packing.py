"""Packed documents stay isolated inside real HF models: the logits of every document of a
packed family batch equal those of the document run alone, for each supported model kind.

The packed batch is what `mixdata.load(..., collate=family)` yields from shards built in
the model's dialect (several documents per row, with images); each document alone is run
the way transformers runs one sequence by default: no position ids (the model numbers it
from 0; Qwen2-VL computes its M-RoPE positions with `get_rope_index` from
`mm_token_type_ids`), only its own images. float32 on CPU. The tolerance is 1e-5 on logits
of magnitude ~1 (measured: 2e-7 at most): the packed and lone runs add the same terms in a
different blocking (longer masked rows, more views per vision batch), which moves float32
results by a few ulps per layer. A control shows the check would fail: with positions that
do not restart, the packed logits move by more than 1e-3.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hf_fixtures import built, composed_setup, model_setup

from mixdata.loading.families import family_collator
from mixdata.manifest import read_manifest
from mixdata.shards import PackedSequence, iter_shard
from mixdata.train.hf.load import compose, load_pretrained
from mixdata.train.hf.spec import ComposedModelSpec, ConnectorSpec

TOLERANCE = 1e-5
FAMILY = {"idefics3": "idefics3", "smolvlm": "idefics3", "llava-next": "llava-next",
          "qwen2vl": "qwen2vl", "qwen2.5vl": "qwen2vl", "internvl": "internvl"}


def sequences(out) -> list[PackedSequence]:
    seqs = []
    for shard in sorted(out.glob("shard-*.tar")):
        with open(shard, "rb") as handle:
            seqs += list(iter_shard(handle))
    return seqs


def doc_alone(seq: PackedSequence, d: int) -> PackedSequence:
    """Document d of a packed sequence as a sequence of its own, with its images."""
    a, b = int(seq.docs[d]), int(seq.docs[d + 1])
    mine = [(image, meta) for image, meta in zip(seq.images, seq.meta["images"])
            if meta["doc"] == d]
    metas = [{**meta, "span": [meta["span"][0] - a, meta["span"][1] - a], "doc": 0}
             for _, meta in mine]
    return PackedSequence(key=f"{seq.key}.{d}", tokens=seq.tokens[a:b], loss=seq.loss[a:b],
                          docs=np.asarray([0, b - a], np.int32), images=[i for i, _ in mine],
                          meta={"docs": [seq.meta["docs"][d]], "images": metas})


def alone_inputs(batch, family: str, image_id: int) -> dict:
    """A one-document family batch as transformers runs a single sequence by default."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "position_ids")}
    if family == "qwen2vl":
        inputs["mm_token_type_ids"] = (batch["input_ids"] == image_id).int()
    return inputs


def logits_of(hf, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return hf(**{**inputs, "use_cache": False}).logits


def check_packed(hf, out, family: str, rows: int = 2) -> float:
    """Largest |packed - alone| over every document of the first `rows` sequences; asserts
    the batch packs several documents and that a non-restarting control differs."""
    manifest = read_manifest(out)
    collator = family_collator(family, manifest, str(out))
    seqs = sequences(out)[:rows]
    assert sum(len(s.docs) - 1 for s in seqs) > rows, "no row packs several documents"
    assert any(s.images for s in seqs), "no image in the packed rows"
    batch = collator.collate([collator.cut(s) for s in seqs])
    packed = logits_of(hf, {k: v for k, v in batch.items() if k != "labels"})
    worst = 0.0
    for b, seq in enumerate(seqs):
        for d in range(len(seq.docs) - 1):
            a, e = int(seq.docs[d]), int(seq.docs[d + 1])
            lone = collator.collate([collator.cut(doc_alone(seq, d))])
            lone = {k: (v[:, :e - a] if k == "input_ids" else v) for k, v in lone.items()}
            alone = logits_of(hf, alone_inputs(lone, family, manifest.dialect.image_id))
            worst = max(worst, float((packed[b, a:e] - alone[0]).abs().max()))
    flat = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    control = logits_of(hf, {**{k: v for k, v in batch.items() if k != "labels"},
                             "position_ids": flat})
    later = slice(int(seqs[0].docs[1]), int(seqs[0].docs[-1]))
    assert float((control[0, later] - packed[0, later]).abs().max()) > 1e-3
    return worst


@pytest.mark.parametrize("kind", list(FAMILY))
def test_packed_logits_equal_documents_alone(kind, tmp_path):
    setup = model_setup(kind, tmp_path / "model")
    out = built(setup, tmp_path)
    hf = load_pretrained(setup.folder, "sdpa").eval()
    assert check_packed(hf, out, FAMILY[kind]) < TOLERANCE


@pytest.mark.parametrize("attention", ["eager"])
def test_other_attention_implementations_isolate_too(attention, tmp_path):
    setup = model_setup("idefics3", tmp_path / "model")
    out = built(setup, tmp_path)
    hf = load_pretrained(setup.folder, attention).eval()
    assert hf.config.get_text_config()._attn_implementation == attention
    assert check_packed(hf, out, "idefics3") < TOLERANCE


@pytest.mark.parametrize("tower,lm,connector", [
    ("siglip", "llama", ConnectorSpec()),
    ("clip", "qwen2", ConnectorSpec(kind="perceiver", latents=4, layers=1, heads=2)),
    ("siglip2", "llama", ConnectorSpec()),
    ("siglip-full", "qwen2", ConnectorSpec()),
    ("clip", "llama", ConnectorSpec(kind="mlp")),
])
def test_composed_packed_logits_equal_documents_alone(tower, lm, connector, tmp_path):
    setup, parts = composed_setup(tmp_path, tower=tower, lm=lm)
    if connector.kind == "mlp":  # a 4 x 4 patch grid, unshuffled: 16 tokens per tile
        setup = replace(setup, tokens_per_tile=16)
    out = built(setup, tmp_path, add_tokens=True)
    tokenizer = setup.tokenizer(add_tokens=True)
    hf = compose(ComposedModelSpec(**parts, connector=connector), tokenizer, seed=0,
                 attention="sdpa").eval()
    assert check_packed(hf, out, "idefics3") < TOLERANCE


@pytest.mark.parametrize("kind", list(FAMILY))
def test_the_models_own_loss_on_family_labels_is_the_contract_loss(kind, tmp_path):
    """`model(**batch).loss` (transformers shifts the unshifted labels) equals mixdata's
    token loss on the pre-shifted contract labels: the README's own-loop recipe is right."""
    from mixdata import load
    from mixdata.train.hf.feed import shift_labels
    from mixdata.train.model import token_losses

    setup = model_setup(kind, tmp_path / "model")
    out = built(setup, tmp_path)
    hf = load_pretrained(setup.folder, "sdpa")
    batch = next(iter(load(out, batch_size=2, collate=FAMILY[kind], seed=2)))
    output = hf(**batch.to("cpu"))
    summed, count = token_losses(output.logits, shift_labels(batch["labels"]))
    assert int(count) > 0
    assert float(output.loss.detach()) == pytest.approx(float(summed / count), rel=1e-5)
