"""PyMuPDF, imported without its layout analyser (about 2.5 s saved per process).

PyMuPDF 2.0 depends on `pymupdf-layout`, and `import pymupdf` then imports `pymupdf.layout`,
which builds ONNX inference sessions for its layout model: 2-3 s in every process that
imports it, that is every build worker that reads PDFs and every PDF render worker's
forkserver. mixdata only renders pages (`get_pixmap`) and reads their text layer
(`get_text`), neither of which consults the layout model (only `Page.get_layout` does).
So the first import goes through here with `pymupdf.layout` marked absent, the import
system's documented rule for a None entry in `sys.modules`; PyMuPDF catches that
ImportError. The mark is removed afterwards, so an explicit `import pymupdf.layout` later
still loads it. A process that imported pymupdf before keeps it as it is.
"""
from __future__ import annotations

import sys

if "pymupdf" not in sys.modules and "pymupdf.layout" not in sys.modules:
    sys.modules["pymupdf.layout"] = None  # type: ignore[assignment]
    try:
        import pymupdf
    finally:
        del sys.modules["pymupdf.layout"]
else:
    import pymupdf

__all__ = ["pymupdf"]
