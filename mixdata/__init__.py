"""mixdata: streaming multimodal data mixtures for training vision-language models."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "load", "load_recipe"]


def __getattr__(name: str):
    # Lazy so `import mixdata` (and the CLI) does not pull in torch until it is needed.
    if name == "load":
        from .loading import load

        return load
    if name == "load_recipe":
        from .recipe import load_recipe

        return load_recipe
    raise AttributeError(f"module 'mixdata' has no attribute {name!r}")
