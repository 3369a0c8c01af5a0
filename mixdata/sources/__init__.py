"""Source adapters: read real public formats into canonical Samples."""
from .base import Source
from .registry import FORMATS, adapter_class, open_source

__all__ = ["FORMATS", "Source", "adapter_class", "open_source"]
