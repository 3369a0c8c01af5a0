"""Megatron-Energon over mixdata shards: a cooker and a task encoder that yield exactly the
batches `mixdata.load` yields (the contract in `mixdata/loading/collate.py`).

A built stage is a plain WebDataset folder, so `energon prepare` indexes it as it is (it
adds `.nv-meta/` beside the shards, which `mixdata.load` ignores):

    energon prepare shards/demo/sft --non-interactive --split-ratio 1,0,0 \\
        --sample-type CrudeWebdataset

Energon hands each sample to a cooker as a crude dict of raw member bytes (`json`,
`tokens.npy`, `loss.npy`, `docs.npy`, `000.jpg`, ...) because the task encoder sets
`decoder = None`. `cook_sequence` turns it into a `PackedSequence` with
`mixdata.shards.decode_sequence`; `MixdataTaskEncoder.encode_sample` checks its images and
placeholders with `mixdata.loading.collate.cut_row`; `batch` is
`mixdata.loading.collate.collate`. So `input_ids`, the already-shifted `labels`,
`position_ids`, `doc_ids`, `cu_seqlens`, `max_seqlen`, uint8 `pixel_values`, `tile_spans`,
`num_tokens` and `num_images` are mixdata's own, to the byte:

    from megatron.energon import WorkerConfig, get_loader, get_train_dataset
    from mixdata.integrations.energon import task_encoder

    dataset = get_train_dataset(
        "shards/demo/sft", batch_size=8, shuffle_buffer_size=100, max_samples_per_sequence=100,
        worker_config=WorkerConfig.default_worker_config(),
        task_encoder=task_encoder("shards/demo/sft"))
    for batch in get_loader(dataset):
        batch["input_ids"], batch["labels"], batch["pixel_values"]   # as from mixdata.load

The sample order, shuffling, blending, rank split and resumable loader state are then
energon's (`get_savable_loader`); mixdata's own guarantees of order and exact resume belong
to `mixdata.load`. A sample that fails to decode or cut raises ShardError inside energon,
which logs and skips it within its failure tolerance (`__default_failure_tolerance__`).
"""
from __future__ import annotations

from pathlib import Path

from ..loading import batch_spec
from ..loading.collate import BatchSpec, Row, collate, cut_row
from ..manifest import read_manifest
from ..shards import PackedSequence, decode_sequence

try:
    from megatron.energon import (
        Cooker,
        Sample,
        TaskEncoder,
        basic_sample_keys,
        edataclass,
        stateless,
    )
except ImportError as err:  # the optional extra is missing
    raise ImportError("mixdata.integrations.energon needs Megatron-Energon: "
                      "pip install mixdata[energon]") from err

__all__ = ["MixdataTaskEncoder", "RowSample", "SequenceSample", "cook_sequence", "task_encoder"]


@edataclass
class SequenceSample(Sample):
    """One packed sequence of a mixdata shard, decoded (`mixdata.shards.PackedSequence`)."""

    sequence: PackedSequence


@edataclass
class RowSample(Sample):
    """A sequence whose images were checked against its placeholders, ready to batch."""

    row: Row


@stateless
def cook_sequence(raw: dict) -> SequenceSample:
    """Energon crude sample (member suffix -> bytes, plus `__key__` etc.) -> SequenceSample.
    Raises ShardError naming the sample and member when it breaks the shard format."""
    members = {name: data for name, data in raw.items() if not name.startswith("__")}
    return SequenceSample(**basic_sample_keys(raw),
                          sequence=decode_sequence(raw["__key__"], members))


class MixdataTaskEncoder(TaskEncoder):
    """Cooks mixdata shard samples and batches them into mixdata's batch contract."""

    decoder = None   # raw bytes: collate decodes each image straight into the batch
    cookers = (Cooker(cook_sequence),)

    def __init__(self, spec: BatchSpec):
        self.spec = spec

    @stateless
    def encode_sample(self, sample: SequenceSample) -> RowSample:
        return RowSample.derive_from(sample, row=cut_row(sample.sequence, self.spec))

    @stateless
    def batch(self, samples: list[RowSample]) -> dict:
        return collate([sample.row for sample in samples], self.spec)


def task_encoder(folder: str | Path) -> MixdataTaskEncoder:
    """The task encoder for a built stage, batching as its manifest says (seq_len, pad and
    image ids, tile, tokens per view), as `mixdata.load` would."""
    return MixdataTaskEncoder(batch_spec([read_manifest(str(folder))], [str(folder)]))
