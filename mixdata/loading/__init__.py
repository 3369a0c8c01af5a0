"""`mixdata.load`: stream built shards into PyTorch with equal work per rank and exact resume.

Modules: `order` (pure order arithmetic: shard permutations, the world-size-independent
lanes and steps, shuffle order, mixture pattern), `reader` (streaming shards with fault
handling), `collate` (pure sequences -> batch, pixel normalisation), `families` (pure
sequences -> a model family's forward keyword arguments), `dataset` (the IterableDataset
and its state).
"""
from __future__ import annotations

import os

import numpy as np
import torch.distributed as dist

from ..errors import MixdataError
from ..manifest import Manifest, locate_manifest, read_manifest
from .collate import BatchSpec, normalize_pixels
from .dataset import LoadConfig, MixdataDataset, MixdataLoader
from .families import FamilyCollate, FamilyCollator, ModelBatch, family_collator
from .order import Component, mixture_pattern

__all__ = ["BatchSpec", "FamilyCollate", "LoadConfig", "MixdataDataset", "MixdataLoader",
           "ModelBatch", "load", "normalize_pixels"]


def load(path_or_url, batch_size: int, *, seed: int = 0, shuffle_buffer: int = 1000,
         epochs: int | None = None, rank: int | None = None, world_size: int | None = None,
         drop_last: bool = True, weights: list[float] | None = None, max_failures: int = 16,
         streams: int | None = None, canonical_ranks: int | None = None,
         approximate_resume: bool = False, collate: str | FamilyCollate | None = None
         ) -> MixdataDataset:
    """An IterableDataset of this rank's batches over one or several built stages.

    - `path_or_url`: a shard folder, a `manifest.json`, or any fsspec URL of either (local,
      http(s), s3, hf, ...); or a list of them to mix with `weights` (shares of sequences,
      default proportional to their sizes; exact deficit schedule, see `loading.order`).
    - `batch_size` sequences per batch; every rank gets `ds.batches_per_epoch` per epoch.
    - `seed` draws the shard order per epoch and the shuffle; `shuffle_buffer` sequences are
      held per rank for it (0: no shuffle); `epochs=None` streams forever.
    - `rank` / `world_size` default to torch.distributed, else $RANK / $WORLD_SIZE, else 0 / 1.
    - `drop_last`: see `loading.order.Split`; `max_failures`: failures in a row before raising.
    - `streams`: how many contiguous streams each canonical rank's share is read as; the
      batch order depends on it and any DataLoader worker count dividing it gives that same
      order. Default: the worker count of `ds.loader()` or of the DataLoader.
    - `canonical_ranks`: the world sizes the batch order is laid out for (default: this
      world size). Global batch k is the same sequences under every world size dividing it
      (with the same global batch, `batch_size x world_size`), so a state resumes exactly on
      more or fewer ranks; see `loading.order`. A state taken with other canonical ranks or
      another global batch is refused, unless `approximate_resume=True` (then its epoch
      restarts at the same fraction, see `loading.dataset`).
    - `collate`: None for mixdata's batch contract (`loading.collate`: shifted labels, uint8
      views, tile spans), or a model family (`"idefics3"`, `"llava-next"`, `"qwen2vl"`,
      `"internvl"`, or a `FamilyCollate` with options) for `ModelBatch`es holding exactly
      that HF model's forward keyword arguments, labels unshifted (`loading.families`). The
      shards must be in that family's dialect.
    """
    urls = [path_or_url] if isinstance(path_or_url, (str, os.PathLike)) else list(path_or_url)
    if not urls:
        raise MixdataError("load needs at least one shard folder or manifest")
    manifests = [read_manifest(url) for url in urls]
    collator = None
    if collate is None:
        spec = batch_spec(manifests, [str(u) for u in urls])
    else:
        collator = _family_collator(collate, manifests, [str(u) for u in urls])
        spec = collator.spec
    config = LoadConfig(batch_size=batch_size, seed=seed, shuffle_buffer=shuffle_buffer,
                        epochs=epochs, drop_last=drop_last, streams=streams,
                        max_failures=max_failures, canonical_ranks=canonical_ranks,
                        approximate_resume=approximate_resume)
    components = [Component(folder=locate_manifest(url)[0], seed=seed + index,
                            shards=tuple((s.name, s.samples) for s in m.shards))
                  for index, (url, m) in enumerate(zip(urls, manifests))]
    for url, component in zip(urls, components):
        if component.samples == 0:
            raise MixdataError(f"{url}: the manifest lists no sequences")
    rank, world_size = placement(rank, world_size)
    return MixdataDataset(components, spec, config, rank=rank, world_size=world_size,
                          pattern=_pattern(components, weights, seed), collator=collator)


def _family_collator(collate, manifests: list[Manifest], urls: list[str]) -> FamilyCollator:
    """One family collator for every dataset mixed, which must batch alike."""
    collators = [family_collator(collate, m, url) for m, url in zip(manifests, urls)]
    for collator, url in zip(collators, urls):
        if (collator.spec, collator.geometry) != (collators[0].spec, collators[0].geometry):
            raise MixdataError(f"{url} does not batch like {urls[0]}: {collator.spec} vs "
                               f"{collators[0].spec}")
    tokenizers = {m.dialect.tokenizer_sha256 for m in manifests}
    if len(tokenizers) > 1:
        raise MixdataError(f"the datasets were tokenized differently ({sorted(tokenizers)})")
    return collators[0]


def _pattern(components: list[Component], weights, seed: int) -> np.ndarray | None:
    sizes = [c.samples for c in components]
    if weights is None:
        weights = sizes
    if len(weights) != len(components):
        raise MixdataError(f"{len(weights)} weights for {len(components)} datasets")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise MixdataError(f"weights must be >= 0 with one positive, got {list(weights)}")
    if len(components) == 1:
        return None
    return mixture_pattern([float(w) for w in weights], sizes, seed)


def placement(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): given, else torch.distributed, else $RANK/$WORLD_SIZE, else 0/1."""
    if dist.is_available() and dist.is_initialized():
        found = (dist.get_rank(), dist.get_world_size())
    else:
        found = (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
    return (found[0] if rank is None else rank,
            found[1] if world_size is None else world_size)


def batch_spec(manifests: list[Manifest], urls: list[str]) -> BatchSpec:
    """What batching needs from the manifests, which must agree when several are mixed."""
    specs = [_one_spec(manifest, url) for manifest, url in zip(manifests, urls)]
    for spec, url in zip(specs, urls):
        if spec != specs[0]:
            raise MixdataError(f"{url} does not batch like {urls[0]}: {spec} vs {specs[0]}")
    tokenizers = {m.dialect.tokenizer_sha256 for m in manifests}
    if len(tokenizers) > 1:
        raise MixdataError(f"the datasets were tokenized differently ({sorted(tokenizers)})")
    return specs[0]


def _one_spec(manifest: Manifest, url: str) -> BatchSpec:
    geometry, dialect = manifest.geometry, manifest.dialect
    if dialect.placeholders == "image":
        raise MixdataError(
            f"{url}: shards in the {dialect.family} dialect hold one run of image tokens per "
            f"image, counted per image by {dialect.family}'s processor rather than per view; the "
            f"default collate needs one run per view, so a {dialect.family} collate is needed "
            f"(collate={dialect.family!r})")
    if geometry.tile is None:
        raise MixdataError(f"{url}: image preset {geometry.preset} makes views of varying "
                           "size; the loader batches square T x T views only")
    # InternVL's dialect writes an image's views as one run, view after view ("runs")
    return BatchSpec(seq_len=manifest.seq_len, pad_id=dialect.pad_id, image_id=dialect.image_id,
                     tokens_per_tile=geometry.tokens_per_view, tile=geometry.tile,
                     mean=tuple(geometry.mean), std=tuple(geometry.std),
                     views_in_runs=dialect.placeholders == "runs")
