"""Tokenizers and rendering Samples into token ids, loss masks and image slots."""
from __future__ import annotations

from .rendering import ImageSlot, RenderedDoc, render
from .tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer, special_names

__all__ = ["ByteTokenizer", "HFTokenizer", "ImageSlot", "RenderedDoc", "Tokenizer",
           "load_tokenizer", "render", "special_names"]
