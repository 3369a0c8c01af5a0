"""Small helpers for source adapter tests: real image bytes, tars, specs and a full read."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

from PIL import Image

from mixdata.errors import Reject
from mixdata.recipe import SourceSpec
from mixdata.sample import Sample
from mixdata.sources import open_source
from mixdata.sources.options import Filters
from mixdata.sources.registry import FORMATS


def image_bytes(width: int = 8, height: int = 6, fmt: str = "PNG", shade: int = 0) -> bytes:
    """A real encoded image; `shade` makes images of the same size differ in content."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (shade % 256, 80, 160)).save(buf, fmt)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return path


def spec(fmt: str, uri, name: str | None = None, filters: Filters | None = None,
         prompt: str | None = None, **options):
    return SourceSpec(name=name or fmt, format=fmt, uri=str(uri) if isinstance(uri, Path) else uri,
                      options=FORMATS[fmt].options(**options), filters=filters or Filters(),
                      prompt=prompt)


def read_all(source_spec) -> tuple[list[Sample], list[Reject], list]:
    """Every item of every unit, in order, split into samples and rejects."""
    source = open_source(source_spec)
    items = [item for unit in source.units() for item in source.read(unit)]
    samples = [i for i in items if isinstance(i, Sample)]
    rejects = [i for i in items if isinstance(i, Reject)]
    return samples, rejects, items


def layout(sample: Sample, images: dict[str, bytes]) -> list[str]:
    """A sample's parts as 'T:<text>' and 'I:<name>' (the name whose bytes the image holds)."""
    names = {data: name for name, data in images.items()}
    return [f"T:{p.text}" if hasattr(p, "text") else f"I:{names.get(p.data, '?')}"
            for p in sample.parts]
