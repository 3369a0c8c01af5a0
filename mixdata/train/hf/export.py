"""A stage's `final/`: the model as a transformers `save_pretrained` folder, with its tokenizer
and processor, LoRA merged.

`AutoModelForImageTextToText.from_pretrained(final)` opens it (for a composed model after
`import mixdata.train.hf.composed`, which registers its type) and `generate` runs on it;
the next stage starts from it. It is written under a temporary name and renamed, so a
`final/` that exists is complete.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .modes import merged
from .wrapper import HFTrainModel

FINAL_DIR = "final"
# the processor's files, as a model folder holds them beside the weights and tokenizer
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json",
                   "video_preprocessor_config.json", "chat_template.jinja", "chat_template.json")


def export_final(model: HFTrainModel, stage_folder: Path, *, tokenizer, dialect,
                 sources: list[Path]) -> Path:
    """Write `stage_folder/final/`: the merged model, the dialect's tokenizer (with any tokens
    it added) and the processor files of the first of `sources` that has each one (the
    recipe's tokenizer folder, then the model's); a composed model gets an Idefics3
    processor made from the stage's geometry."""
    target = Path(stage_folder) / FINAL_DIR
    tmp = target.with_name(f"{FINAL_DIR}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    merged(model)
    model.hf.save_pretrained(str(tmp))
    tokenizer.hf.save_pretrained(str(tmp))
    if model.arch.model_type == "mixdata_vlm":
        composed_processor(tokenizer, dialect).save_pretrained(str(tmp))
    else:
        for name in PROCESSOR_FILES:
            found = next((s / name for s in sources if (Path(s) / name).is_file()), None)
            if found is not None:
                shutil.copyfile(found, tmp / name)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def composed_processor(tokenizer, dialect):
    """An Idefics3Processor for the composed model: its batches are idefics3's, with the
    stage's longest edge, tile, filter, mean and std and the tokens per tile."""
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor
    from transformers.image_utils import PILImageResampling

    geometry = dialect.geometry
    resample = {"lanczos": PILImageResampling.LANCZOS, "bicubic": PILImageResampling.BICUBIC,
                "bilinear": PILImageResampling.BILINEAR, "box": PILImageResampling.BOX}
    images = Idefics3ImageProcessorPil(
        size={"longest_edge": geometry["longest_edge"]},
        max_image_size={"longest_edge": geometry["tile"]},
        resample=resample[geometry["filter"]], image_mean=list(geometry["mean"]),
        image_std=list(geometry["std"]))
    return Idefics3Processor(images, tokenizer.hf, image_seq_len=dialect.tokens_per_tile,
                             chat_template=tokenizer.chat_template)
