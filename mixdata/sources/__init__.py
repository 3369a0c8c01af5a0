"""Source adapters: read real public formats into canonical Samples."""
from .base import Source, SourceStats
from .registry import ADAPTERS, adapter_class, open_source

__all__ = ["ADAPTERS", "Source", "SourceStats", "adapter_class", "open_source"]
