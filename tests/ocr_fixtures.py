"""PDF fixtures and a counting reader for the OCR/text/SFT/HF/remote source tests.

Generic helpers (images, tars, specs) live in source_fixtures.py.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field

import pymupdf
from source_fixtures import image_bytes

from mixdata.errors import Reject
from mixdata.sources import open_source


@dataclass
class ReadCounts:
    """What one pass over a source gave: items read, samples yielded, rejects by reason."""

    read: int = 0
    yielded: int = 0
    rejected: Counter = field(default_factory=Counter)
    retries: int = 0


def read_counted(source_spec) -> tuple[list, ReadCounts]:
    """Every item of every unit, and what they add up to (retries included)."""
    source, counts, items = open_source(source_spec), ReadCounts(), []
    for unit in source.units():
        for item in source.read(unit):
            counts.read += 1
            if isinstance(item, Reject):
                counts.rejected[item.reason] += 1
            else:
                counts.yielded += 1
            items.append(item)
    counts.retries = source.retries
    return items, counts


def reasons(items) -> list[str]:
    return [i.reason for i in items if isinstance(i, Reject)]


def make_pdf(pages: list[str | None], size=(300, 200)) -> bytes:
    """One page per entry: text lines, or None for a scan (an image, no text layer)."""
    doc = pymupdf.open()
    for text in pages:
        page = doc.new_page(width=size[0], height=size[1])
        if text is None:
            page.insert_image(pymupdf.Rect(10, 10, 110, 80), stream=image_bytes(32, 24))
        else:
            page.insert_text((20, 30), text, fontsize=11)
    return doc.tobytes()


def slow_pdf(strokes: int = 20_000) -> bytes:
    """Page 0 is one path of many long strokes (over 10 s to rasterise at 150 dpi) plus a text
    line; page 1 is plain text. The content stream is written directly: building it through
    `Shape` takes seconds."""
    rng = random.Random(0)
    point = lambda: f"{rng.random() * 600:.1f} {rng.random() * 800:.1f}"  # noqa: E731
    ops = ["0.5 w", *(f"{point()} m {point()} l" for _ in range(strokes)), "S"]
    doc = pymupdf.open()
    page = doc.new_page(width=600, height=800)
    xref = doc.get_new_xref()
    doc.update_object(xref, "<<>>")
    doc.update_stream(xref, "\n".join(ops).encode())
    page.set_contents(xref)
    page.insert_text((20, 30), "a slow page")
    doc.new_page(width=300, height=200).insert_text((20, 30), "after the slow page")
    return doc.tobytes()


def encrypted_pdf() -> bytes:
    doc = pymupdf.open()
    doc.new_page().insert_text((20, 30), "secret")
    return doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="user", owner_pw="owner")


EMPTY_PDF = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
             b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
             b"trailer << /Root 1 0 R >>\n%%EOF\n")


def pdfa_json(pages: list[list[str]]) -> bytes:
    """The pixparse/pdfa-eng-wds page schema (boxes normalised to 0..1)."""
    out = []
    for lines in pages:
        boxes = [[0.1, 0.1 + 0.05 * i, 0.5, 0.04] for i in range(len(lines))]
        out.append({"images_bbox": [], "images_bbox_no_text_overlap": [],
                    "lines": {"text": lines, "bbox": boxes, "score": [0.99] * len(lines),
                              "word_slice": [[0, len(x.split())] for x in lines]},
                    "words": {"text": [w for x in lines for w in x.split()], "bbox": [],
                              "score": [], "line_pos": []}})
    return json.dumps({"pages": out}).encode()


def idl_json(pages: list[list[str]]) -> bytes:
    """The pixparse/idl-wds page schema: a flat list of lines per page."""
    return json.dumps({"pages": [{"text": lines, "bbox": [[0, 0, 1, 1]] * len(lines),
                                  "poly": [], "score": [1.0] * len(lines)}
                                 for lines in pages]}).encode()
