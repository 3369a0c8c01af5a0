"""Family collates: packed sequences -> exactly the keyword arguments of an HF model's forward.

`mixdata.load(url, batch_size, collate="idefics3")` (or a `FamilyCollate`) yields
`ModelBatch`es, dicts to call the model with: `model(**batch.to(device))`. Every family has,
for B rows of L = seq_len tokens:
- `input_ids` int64 [B, L], padded with the dialect's pad id;
- `position_ids` int64 [B, L], restarting at 0 for each document and for the padding run.
  transformers (5.24, `masking_utils._preprocess_mask_arguments`) reads packed sequences
  from the positions only when there is no `attention_mask` and no cache:
  `find_packed_sequence_indices` starts a sequence wherever a position is not the previous
  one plus 1, and the block-causal mask follows (sdpa, eager, flex); flash-attention-2 turns
  the same positions into varlen `cu_seqlens`. A 2-D `attention_mask` or a cache turns that
  off and documents silently attend to each other, so no `attention_mask` is given;
- `labels` int64 [B, L], **not shifted**: `labels[b, t]` is `input_ids[b, t]` when token t
  is a supervised target, else -100. The model shifts them inside its loss (transformers'
  `ForCausalLMLoss`: logits at t predict labels[t + 1]). The first token of every document
  is -100, so the target of a document's last token is never the next document's first
  token, and padding is -100;
- `use_cache` False: configs default to True (Idefics3's model then builds a cache), which
  would turn the packed-sequence detection off; training needs no cache.

Family keys (absent when the batch holds no image, as with the processor):
- `idefics3` (Idefics3, SmolVLM, mixdata's composed model): `pixel_values` float32
  [B, V, 3, T, T], each row's views in token order, rows padded with all-zero views (which
  the model drops) to the most views V of any row; `pixel_attention_mask` bool [B, V, T, T],
  True on real views;
- `llava-next`: `pixel_values` float32 [N, V, 3, T, T] per image (base view first, then the
  tiles row-major), zero-padded to the most views of any image; `image_sizes` int64 [N, 2],
  (height, width) of each source image;
- `qwen2vl`: `pixel_values` float32 [P, 3 * temporal * patch²], every image's patches
  flattened as Qwen2VLImageProcessor does; `image_grid_thw` int64 [N, 3]; and
  `position_ids` [4, B, L]: row 0 the text positions above (what the mask reads), rows 1-3
  the M-RoPE (temporal, height, width) positions `get_rope_index` gives each document alone;
- `internvl`: `pixel_values` float32 [N views, 3, T, T].

Pixels are `(x / 255 - mean) / std` with the manifest's mean and std, computed as
transformers' image processors do (rescale in float64, cast to float32, normalise in
float32), through a 256-entry table per channel: the same float32 values.

`batch.stats` (an attribute, not a key, so `model(**batch)` stays exact) holds the counts a
trainer's metrics need: real tokens, images, vision views and their pixels, and Σ len² over
documents.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import MixdataError, RecordRejected
from ..image import ImagePlan
from ..image.processing import RESAMPLE
from ..image.tiles import check_size, decode_processed, processed_size, tiles_into, view_shape
from ..shards import PackedSequence, ShardError
from ..tokens.families import llava_next_count
from .collate import BatchSpec, Row, RowFailed, collate, cut_row, placeholder_runs, row_arrays

FAMILY_COLLATES = ("idefics3", "llava-next", "qwen2vl", "internvl")
IGNORE = -100


@dataclass(frozen=True, kw_only=True)
class FamilyCollate:
    """Which family's forward format to batch in, and the vision numbers qwen2vl's patches
    need beyond the manifest (its processor's `patch_size`, `temporal_patch_size`,
    `merge_size`; Qwen2-VL's own values by default)."""

    family: str
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2

    def __post_init__(self) -> None:
        if self.family not in FAMILY_COLLATES:
            raise MixdataError(f"collate={self.family!r} is not a family collate; expected one "
                               f"of {', '.join(FAMILY_COLLATES)}")


@dataclass(frozen=True)
class BatchStats:
    """Counts of one family batch, for throughput and FLOPs: real (non-pad) tokens, images,
    views the vision encoder sees (qwen2vl: one per image), their pixels (Σ H×W), and
    Σ len² over the packed documents (attention cost)."""

    num_tokens: int
    num_images: int
    num_views: int
    view_pixels: int
    doc_lengths_sq: int


class ModelBatch(dict):
    """A family batch: exactly the model's forward keyword arguments, and `stats`."""

    def __init__(self, data: dict, stats: BatchStats) -> None:
        super().__init__(data)
        self.stats = stats

    def to(self, device=None, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> ModelBatch:
        """The batch on `device`, floating tensors (pixels) cast to `dtype` when given; other
        values (use_cache) unchanged, like transformers' `BatchFeature.to`."""
        moved = {}
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                cast = dtype if dtype is not None and value.is_floating_point() else None
                value = value.to(device=device, dtype=cast, non_blocking=non_blocking)
            moved[key] = value
        return ModelBatch(moved, self.stats)


def pixel_table(mean, std) -> np.ndarray:
    """float32 [3, 256]: the normalised value of each uint8 level per channel, computed as
    transformers' `rescale` (float64 multiply, float32 cast) then `normalize` (float32)."""
    levels = (np.arange(256, dtype=np.uint8).astype(np.float64) * (1 / 255)).astype(np.float32)
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return np.stack([(levels - mean32[c]) / std32[c] for c in range(3)]).astype(np.float32)


def normalise_into(views: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """uint8 [V, H, W, 3] -> float32 `out` [V, 3, H, W] through `pixel_table`."""
    for channel in range(3):
        out[:, channel] = table[channel][views[..., channel]]


def decode_views(data: bytes, plan: ImagePlan) -> np.ndarray:
    """uint8 [V, H, W, 3] views of one processed image (`view_shape(plan)`), in layout
    order. The global view is the processed image resized by Pillow with the plan's own
    filter, as the family processors resize it (the default collate's faster torch resize
    serves LANCZOS by bicubic and differs from Pillow's bicubic by up to one grey level)."""
    pixels = decode_processed(data, plan)
    views = np.empty(view_shape(plan), np.uint8)
    tiles_into(pixels, plan, views)
    if plan.global_view != "none":
        side = plan.tile
        small = Image.fromarray(pixels).resize((side, side), RESAMPLE[plan.filter])
        views[0 if plan.global_view == "before" else -1] = np.asarray(small)
    return views


def hf_labels(seq: PackedSequence, length: int) -> np.ndarray:
    """int64 [length] unshifted labels (module docstring): a token's own id where it is a
    supervised target and not the first token of its document, else -100."""
    labels = np.full(length, IGNORE, np.int64)
    n = len(seq.tokens)
    supervised = seq.loss[:n] == 1
    supervised[seq.docs[:-1][seq.docs[:-1] < n]] = False
    labels[:n][supervised] = seq.tokens[supervised]
    return labels


def text_arrays(rows: list[Row], spec: BatchSpec) -> tuple[np.ndarray, ...]:
    """input_ids, labels, position_ids, doc_ids [B, L] of the rows."""
    count, length = len(rows), spec.seq_len
    input_ids = np.full((count, length), spec.pad_id, np.int64)
    labels = np.empty((count, length), np.int64)
    positions = np.empty((count, length), np.int64)
    doc_ids = np.empty((count, length), np.int32)
    for b, row in enumerate(rows):
        input_ids[b, :len(row.seq.tokens)] = row.seq.tokens
        labels[b] = hf_labels(row.seq, length)
        _, positions[b], doc_ids[b] = row_arrays(row.seq, length)
    return input_ids, labels, positions, doc_ids


def batch_stats(rows: list[Row], views: list[np.ndarray]) -> BatchStats:
    lengths = np.concatenate([np.diff(row.seq.docs) for row in rows]).astype(np.int64)
    return BatchStats(num_tokens=int(sum(len(r.seq.tokens) for r in rows)),
                      num_images=int(sum(len(r.images) for r in rows)),
                      num_views=int(sum(len(v) for v in views)),
                      view_pixels=int(sum(v.shape[0] * v.shape[1] * v.shape[2] for v in views)),
                      doc_lengths_sq=int((lengths ** 2).sum()))


class FamilyCollator:
    """Checks each sequence's images against its placeholders (`cut`) and batches rows in
    the family's forward format (`collate`); see the module docstring."""

    def __init__(self, options: FamilyCollate, spec: BatchSpec, geometry: dict) -> None:
        self.options, self.spec, self.geometry = options, spec, geometry
        self.family = options.family
        self.table = pixel_table(spec.mean, spec.std)

    # --- checking ------------------------------------------------------------------------
    def cut(self, seq: PackedSequence) -> Row:
        """Raises ShardError when an image or its placeholders disagree with its plan."""
        if self.family in ("idefics3", "internvl"):
            return cut_row(seq, self.spec)  # one run per view (internvl: split from runs)
        if len(seq.tokens) > self.spec.seq_len:
            raise ShardError(f"sample {seq.key!r} holds {len(seq.tokens)} tokens, above "
                             f"seq_len {self.spec.seq_len}")
        images, spans = [], []
        for index, (meta, (data, _)) in enumerate(zip(seq.meta.get("images", []), seq.images)):
            plan, data, (start, end) = self._image(seq, index, meta, data)
            runs = placeholder_runs(seq.tokens, start, end, self.spec.image_id)
            want = self._image_tokens(plan)
            if len(runs) != 1 or runs[0, 1] - runs[0, 0] != want:
                raise ShardError(f"sample {seq.key!r}: image {index} has placeholder runs "
                                 f"{(runs[:, 1] - runs[:, 0]).tolist()}, its {self.family} "
                                 f"plan needs one run of {want}")
            images.append((data, plan))
            spans.append(runs)
        return Row(seq, images, spans)

    def _image(self, seq: PackedSequence, index: int, meta: dict, data) -> tuple:
        try:
            plan = ImagePlan.from_json(meta["plan"])
            data = bytes(data)
            check_size(*processed_size(data), plan)
            span = tuple(meta["span"])
        except (KeyError, TypeError, ValueError, OSError, RecordRejected) as err:
            raise ShardError(f"sample {seq.key!r}: image {index} cannot be cut: {err}") \
                from None
        if plan.preset != self.family:
            raise ShardError(f"sample {seq.key!r}: image {index} has a {plan.preset} plan in "
                             f"{self.family} shards")
        unit = self.spec.tile
        if self.family == "llava-next" and plan.tile != unit:
            raise ShardError(f"sample {seq.key!r}: image {index} has {plan.tile} px tiles, "
                             f"the stage's tile is {unit}")
        if self.family == "qwen2vl" and any(side % unit for side in plan.canvas_size):
            raise ShardError(f"sample {seq.key!r}: image {index} is {plan.canvas_size}, not "
                             f"a multiple of the {unit} px unit")
        return plan, data, span

    def _image_tokens(self, plan: ImagePlan) -> int:
        if self.family == "qwen2vl":
            return int(plan.view_tokens)
        return llava_next_count(plan, self.geometry["patch_size"], self.geometry["extra_tokens"])

    # --- batching ------------------------------------------------------------------------
    def collate(self, rows: list[Row], allocate=None) -> ModelBatch:
        """The ModelBatch of `rows`. `allocate` (the loader's uint8 pixel allocator) is not
        used: the float pixels are made here, and a DataLoader worker's tensors reach the
        main process through torch's shared-memory pickling. Raises RowFailed naming a row
        whose image does not decode."""
        input_ids, labels, positions, _ = text_arrays(rows, self.spec)
        views = self._decode(rows)
        out = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
               "position_ids": torch.from_numpy(positions), "use_cache": False}
        if self.family == "qwen2vl":
            out["position_ids"] = torch.from_numpy(self._mrope(rows, positions))
        if any(len(v) for v in views):
            pixels = {"idefics3": self._pixels_idefics3, "llava-next": self._pixels_llava_next,
                      "qwen2vl": self._pixels_qwen2vl, "internvl": self._pixels_internvl}
            out.update(pixels[self.family](rows, views))
        flat = [image for row_views in views for image in row_views]
        return ModelBatch(out, batch_stats(rows, flat))

    def _decode(self, rows: list[Row]) -> list[list[np.ndarray]]:
        """Per row, per image: its uint8 views [V, H, W, 3]."""
        out = []
        for b, row in enumerate(rows):
            images = []
            for index, (data, plan) in enumerate(row.images):
                try:
                    images.append(decode_views(data, plan))
                except (ValueError, OSError) as err:
                    raise RowFailed(b, f"sample {row.seq.key!r}: image {index} does not "
                                       f"decode: {err}") from None
            out.append(images)
        return out

    def _normalised(self, views: np.ndarray) -> np.ndarray:
        out = np.empty((views.shape[0], 3, views.shape[1], views.shape[2]), np.float32)
        normalise_into(views, self.table, out)
        return out

    def _pixels_idefics3(self, rows, views) -> dict:
        per_row = [np.concatenate(v) if v else None for v in views]
        most = max(len(v) for v in per_row if v is not None)
        tile = self.spec.tile
        pixels = np.zeros((len(rows), most, 3, tile, tile), np.float32)
        mask = np.zeros((len(rows), most, tile, tile), bool)
        for b, row_views in enumerate(per_row):
            if row_views is not None:
                pixels[b, :len(row_views)] = self._normalised(row_views)
                mask[b, :len(row_views)] = True
        return {"pixel_values": torch.from_numpy(pixels),
                "pixel_attention_mask": torch.from_numpy(mask)}

    def _pixels_internvl(self, rows, views) -> dict:
        flat = np.concatenate([image for row_views in views for image in row_views])
        return {"pixel_values": torch.from_numpy(self._normalised(flat))}

    def _pixels_llava_next(self, rows, views) -> dict:
        images = [image for row_views in views for image in row_views]
        plans = [plan for row in rows for _, plan in row.images]
        most, tile = max(len(v) for v in images), self.spec.tile
        pixels = np.zeros((len(images), most, 3, tile, tile), np.float32)
        for i, image in enumerate(images):
            pixels[i, :len(image)] = self._normalised(image)
        sizes = np.asarray([[p.source_size[1], p.source_size[0]] for p in plans], np.int64)
        return {"pixel_values": torch.from_numpy(pixels), "image_sizes": torch.from_numpy(sizes)}

    def _pixels_qwen2vl(self, rows, views) -> dict:
        patches, grids = [], []
        for image in (image for row_views in views for image in row_views):
            flat, grid = self._patchify(self._normalised(image)[0])
            patches.append(flat)
            grids.append(grid)
        return {"pixel_values": torch.from_numpy(np.concatenate(patches)),
                "image_grid_thw": torch.from_numpy(np.asarray(grids, np.int64))}

    def _patchify(self, image: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """float32 [3, H, W] -> ([grid_h * grid_w, 3 * t * p * p], [1, grid_h, grid_w]), the
        layout of Qwen2VLImageProcessor's `patchify` (the image repeated over time)."""
        p, m, t = (self.options.patch_size, self.options.merge_size,
                   self.options.temporal_patch_size)
        channels, height, width = image.shape
        gh, gw = height // p, width // p
        blocks = image.reshape(channels, gh // m, m, p, gw // m, m, p)
        blocks = blocks.transpose(1, 4, 2, 5, 0, 3, 6)[:, :, :, :, :, None]
        blocks = np.broadcast_to(blocks, (*blocks.shape[:5], t, p, p))
        return np.ascontiguousarray(blocks).reshape(gh * gw, channels * t * p * p), [1, gh, gw]

    def _mrope(self, rows: list[Row], text: np.ndarray) -> np.ndarray:
        """int64 [4, B, L]: the text positions, then M-RoPE per document (module docstring)."""
        out = np.empty((4, *text.shape), np.int64)
        out[0] = text
        unit = self.options.patch_size * self.options.merge_size
        for b, row in enumerate(rows):
            grids = [(run[0, 0], run[0, 1], plan.canvas_size[1] // unit,
                      plan.canvas_size[0] // unit) for (_, plan), run in zip(row.images,
                                                                            row.spans)]
            out[1:, b] = mrope_row(row.seq.docs, text.shape[1], grids)
        return out


def mrope_row(docs: np.ndarray, length: int, images: list[tuple[int, int, int, int]]
              ) -> np.ndarray:
    """int64 [3, length] M-RoPE positions of one packed row, each document from 0 as
    Qwen2-VL's `get_rope_index` numbers a sequence: text tokens advance all three axes by
    one; an image run of grid_h x grid_w merged patches (row-major) takes (cur, cur + row,
    cur + col) and then advances cur by max(grid_h, grid_w). `images` are (start, end,
    grid_h, grid_w) per image run; the padding run counts from 0 like text."""
    out = np.empty((3, length), np.int64)
    bounds = [*docs.tolist(), length] if docs[-1] < length else docs.tolist()
    runs = sorted(images)
    for a, b in itertools.pairwise(bounds):
        cur, t = 0, a
        for start, end, gh, gw in (r for r in runs if a <= r[0] < b):
            out[:, t:start] = cur + np.arange(start - t)
            cur += start - t
            out[0, start:end] = cur
            out[1, start:end] = cur + np.repeat(np.arange(gh), gw)
            out[2, start:end] = cur + np.tile(np.arange(gw), gh)
            cur, t = cur + max(gh, gw), end
        out[:, t:b] = cur + np.arange(b - t)
    return out


def family_collator(options: FamilyCollate | str, manifest, url: str) -> FamilyCollator:
    """The collator for shards of `manifest`, which must be in `options.family`'s dialect."""
    if isinstance(options, str):
        options = FamilyCollate(family=options)
    dialect, geometry = manifest.dialect, manifest.geometry
    if dialect.family == "mixdata":
        raise MixdataError(f"{url}: the shards are in mixdata's own dialect, which the "
                           "default collate batches (collate=None)")
    if dialect.family != options.family:
        raise MixdataError(f"{url}: the shards are in the {dialect.family} dialect; "
                           f"collate={options.family!r} needs shards built with a "
                           f"{options.family} model's tokenizer (or use collate="
                           f"{dialect.family!r})")
    tile = geometry.tile
    if options.family == "qwen2vl":
        tile = options.patch_size * options.merge_size
        if dialect.geometry.get("patch") != tile:
            found = dialect.geometry.get("patch")
            raise MixdataError(f"{url}: the shards' qwen2vl unit is {found} px but "
                               f"patch_size {options.patch_size} x merge_size "
                               f"{options.merge_size} is {tile}; rebuild with image.patch: {tile}")
    spec = BatchSpec(seq_len=manifest.seq_len, pad_id=dialect.pad_id, image_id=dialect.image_id,
                     tokens_per_tile=geometry.tokens_per_view, tile=tile,
                     mean=tuple(geometry.mean), std=tuple(geometry.std),
                     views_in_runs=dialect.placeholders == "runs")
    return FamilyCollator(options, spec, dialect.geometry)


def default_collator(spec: BatchSpec):
    """The contract collate as a collator (`cut`, `collate`), for the loader."""
    return _ContractCollator(spec)


@dataclass(frozen=True)
class _ContractCollator:
    spec: BatchSpec

    def cut(self, seq: PackedSequence) -> Row:
        return cut_row(seq, self.spec)

    def collate(self, rows: list[Row], allocate) -> dict:
        return collate(rows, self.spec, allocate)
