"""Tokenizers and rendering Samples into token ids, loss masks and image slots."""
from __future__ import annotations

from .documents import ImageSlot, RenderedDoc
from .loader import load_tokenizer
from .rendering import render
from .tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, special_names

__all__ = ["ByteTokenizer", "HFTokenizer", "ImageSlot", "RenderedDoc", "Tokenizer",
           "load_tokenizer", "render", "special_names"]
