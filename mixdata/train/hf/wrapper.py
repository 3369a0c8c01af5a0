"""`HFTrainModel`: an HF VLM as the training loop calls it.

`forward(**batch) -> logits` calls the HF model on a family batch (`loading.families`, the
labels left out: the loop computes the loss from its own shifted copy) with no cache, so
transformers isolates the packed documents. A batch without images adds 0 x the vision
path on a blank image in training (see `arch` and `forward`).

What the parallel layer (`mixdata.train.parallel`) and an MFU counter need:
- `transformer_blocks()`: the vision and LM blocks (each one FSDP / checkpoint unit), and
  `block_classes()` their class names (for `blocks_of_class`);
- `vision_facts`: the tower's patch size, width, depth and MLP width, tile and tokens per
  view (`arch.VisionFacts`).
"""
from __future__ import annotations

import torch
from torch import nn

from .arch import CONNECTOR, LM, VISION, Arch, arch_of, blank_image_loss, vision_facts

IMAGE_KEYS = ("pixel_values", "pixel_values_videos")
BLOCK_LISTS = ("layers", "blocks", "layer")


class HFTrainModel(nn.Module):
    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf
        self.arch: Arch = arch_of(hf.config)
        self.vision_facts = vision_facts(hf.config)

    @property
    def family(self) -> str:
        return self.arch.family

    def forward(self, **inputs) -> torch.Tensor:
        """Family batch keyword arguments (without labels) -> logits [B, L, vocab]."""
        inputs = {**inputs, "use_cache": False}
        blank = None
        # always in training, and before the LM as real images are: under FSDP2 a rank
        # without images then gathers (and in backward reduces) the same units in the same
        # order as a rank with them, frozen tower or not; under DDP it keeps every trained
        # vision and connector parameter in the graph
        if self.training and inputs.get("pixel_values") is None:
            blank = blank_image_loss(self.hf, self.arch)
        logits = self.hf(**inputs).logits
        return logits if blank is None else logits + blank

    def group_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """vision / connector / lm -> their (name, parameter), each parameter once (a tied
        head counts with the embeddings); KeyError-free: every parameter has a group."""
        groups: dict[str, list] = {VISION: [], CONNECTOR: [], LM: []}
        for name, param in self.hf.named_parameters():
            group = self.arch.group_of(name)
            if group is None:
                raise ValueError(f"parameter {name} of {self.arch.model_type} is in no module "
                                 "group (vision, connector, lm)")
            groups[group].append((name, param))
        return groups

    def transformer_blocks(self) -> list[nn.Module]:
        """The outermost blocks of the vision tower and the LM, in module order."""
        blocks, inside = [], []
        for name, module in self.hf.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(module, nn.ModuleList) and leaf in BLOCK_LISTS and \
                    self.arch.group_of(name + ".") in (VISION, LM) and \
                    not any(name.startswith(outer + ".") for outer in inside):
                blocks += list(module)
                inside.append(name)
        return blocks

    def block_classes(self) -> list[str]:
        return sorted({type(block).__name__ for block in self.transformer_blocks()})

    def tied_head(self) -> bool:
        head, embed = self.hf.get_output_embeddings(), self.hf.get_input_embeddings()
        return head is not None and head.weight is embed.weight
