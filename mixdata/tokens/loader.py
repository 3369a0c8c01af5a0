"""`load_tokenizer(spec)`: the tokenizer a recipe names, in its dialect.

`"bytes"` and a tokenizer.json file speak mixdata's own dialect (`tokenizer.py`); anything
else is an HF tokenizer or model folder, local or any fsspec URL, and speaks that model's
dialect (`hf.py`, which needs `transformers` only when a folder is loaded).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import MixdataError
from .hf import load_model_tokenizer
from .tokenizer import ByteTokenizer, HFTokenizer, Tokenizer


def is_folder_spec(spec: str) -> bool:
    """Whether `tokenizer:` names an HF tokenizer or model folder (the model's own dialect)
    rather than mixdata's dialect (`bytes`, or a tokenizer.json file)."""
    return spec != "bytes" and not spec.endswith(".json")


def load_tokenizer(spec: str, *, family: str | None = None, add_tokens: bool = False,
                   grid: int = 0) -> Tokenizer:
    """`"bytes"` or a tokenizer.json file (mixdata's dialect), or an HF tokenizer or model
    folder, local or any fsspec URL (that model's dialect, see `mixdata.tokens.hf`).

    For a folder, `family` is the image family (default: from its processor_config.json),
    `add_tokens` allows adding the family's missing image tokens, and `grid` is the most
    idefics3 tile rows/columns the recipe can produce (their markers must exist).
    """
    if spec == "bytes":
        return ByteTokenizer()
    if is_folder_spec(spec):
        return load_model_tokenizer(spec, family, add_tokens=add_tokens, grid=grid)
    path = Path(spec)
    if not path.is_file():
        raise MixdataError(f"tokenizer {spec!r}: expected 'bytes', a tokenizer.json file or an "
                           f"HF tokenizer folder; {path} does not exist")
    return HFTokenizer(spec, path)
