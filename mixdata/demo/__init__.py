"""The embedded demo corpus: small, deterministic, in the real public formats of sources.md.

`write_corpus(out_dir, scale)` writes it; `ensure_corpus(scale)` returns the cached copy that
`demo://` URIs in recipes resolve against, generating it on first use.
"""
from .corpus import ensure_corpus, write_corpus

__all__ = ["ensure_corpus", "write_corpus"]
