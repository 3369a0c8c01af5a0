"""Turning an image reference (URL or path) from a record into bytes.

Order: a recipe `images_root` mirror first (keyed by file name, sha1 of the ref, or the ref's
own relative path), then absolute paths and URLs (URLs only with `fetch: true`), then paths
relative to the folder of the file being read. A miss raises FileNotFoundError, which
adapters turn into the reject reason `image_missing`.
"""
from __future__ import annotations

import hashlib
import posixpath

from ..storage import RetryCounter, read_bytes


def mirror_key(ref: str, image_key: str) -> str:
    if image_key == "sha1":
        return hashlib.sha1(ref.encode()).hexdigest()
    if image_key == "name":
        return posixpath.basename(ref.split("?", 1)[0])
    return ref.split("://", 1)[-1].lstrip("/")


def candidates(ref: str, options, base_dir: str, image_key: str = "name") -> list[str]:
    root = getattr(options, "images_root", None)
    out = []
    if root:
        out.append(posixpath.join(root, mirror_key(ref, image_key)))
    if "://" in ref:
        if getattr(options, "fetch", False) or ref.startswith("file://"):
            out.append(ref)
    elif ref.startswith("/"):
        out.append(ref)
    elif not root:
        out.append(posixpath.join(base_dir, ref))
    return out


def resolve_image(ref: str, options, base_dir: str, counter: RetryCounter | None = None,
                  image_key: str = "name") -> bytes:
    """The bytes of `ref`; FileNotFoundError naming what was tried when nothing has it, and
    StorageError when a remote candidate keeps failing."""
    tried = candidates(ref, options, base_dir, image_key)
    for url in tried:
        try:
            return read_bytes(url, counter)
        except (FileNotFoundError, IsADirectoryError):
            continue
    hint = "set images_root to a local mirror, or fetch: true to download" if not tried else \
        "tried " + ", ".join(tried)
    raise FileNotFoundError(f"image {ref!r} not found ({hint})")
