"""mixdata: streaming multimodal data mixtures for training vision-language models."""
from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"
__all__ = ["__version__", "load", "load_recipe"]


# Lazy so `import mixdata` (and the CLI) does not pull in torch until it is needed.
__getattr__ = lazy_exports(__name__, {"load": ".loading", "load_recipe": ".recipe"})
