"""PDF documents for the demo corpus: text pages drawn with PyMuPDF, their pdfa-style word and
line boxes, and the broken PDFs (encrypted, zero pages, garbage, scan) adapters must reject.

PyMuPDF output is byte-stable for a given document: it stores no dates and, with
`no_new_id`, no random file ID. Its encryption is not: it always draws a fresh file ID, which
the encryption key depends on. The encrypted sample is therefore assembled here with the
PDF standard security handler (revision 2, RC4), whose inputs are all fixed.
"""
from __future__ import annotations

import hashlib
from itertools import groupby

import numpy as np

from ..sources.mupdf import pymupdf  # without its layout model, which every recipe load paid
from . import content

PAGE_SIZE = (384, 256)  # points: 384 x 256 px at 72 dpi; 13 pt text is ~9 px once resized to 256
FONT_SIZE = 13
LINE_GAP = 20


def text_page_lines(rng: np.random.Generator) -> list[str]:
    return [content.sentence(rng) for _ in range(int(rng.integers(4, 9)))]


def make_pdf(pages: list[list[str]], rng: np.random.Generator,
             scan_page: bytes | None = None) -> tuple[bytes, list[dict]]:
    """A PDF with one text page per entry of `pages` (then an image-only page when
    `scan_page` holds PNG bytes), and its pdfa-eng-wds `pages` annotation."""
    doc = pymupdf.open()
    annotations = []
    for lines in pages:
        page = doc.new_page(width=PAGE_SIZE[0], height=PAGE_SIZE[1])
        x, y = float(rng.integers(12, 40)), float(rng.integers(24, 40))
        for row, line in enumerate(lines):
            page.insert_text((x, y + row * LINE_GAP), line, fontsize=FONT_SIZE, fontname="helv")
        annotations.append(pdfa_page(page))
    if scan_page is not None:
        page = doc.new_page(width=PAGE_SIZE[0], height=PAGE_SIZE[1])
        page.insert_image(page.rect, stream=scan_page)
        annotations.append(pdfa_page(page))
    data = doc.tobytes(garbage=3, deflate=True, no_new_id=True)
    doc.close()
    return data, annotations


def pdfa_page(page: pymupdf.Page) -> dict:
    """The pdfa-eng-wds annotation of a page, from the words PyMuPDF reports it drew.

    Boxes are [x, y, w, h] normalised to 0..1 with the origin at the top left;
    `word_slice` is each line's [start, end) range in `words`, and `line_pos` each word's
    [line index, position in line]."""
    width, height = page.rect.width, page.rect.height
    words = sorted(page.get_text("words"), key=lambda w: (w[5], w[6], w[7]))
    lines = {"text": [], "bbox": [], "score": [], "word_slice": []}
    out_words = {"text": [], "bbox": [], "score": [], "line_pos": []}
    for line_index, (_, group) in enumerate(groupby(words, key=lambda w: (w[5], w[6]))):
        group = list(group)
        start = len(out_words["text"])
        for position, (x0, y0, x1, y1, text, *_rest) in enumerate(group):
            out_words["text"].append(text)
            out_words["bbox"].append(_box(x0, y0, x1, y1, width, height))
            out_words["score"].append(1.0)
            out_words["line_pos"].append([line_index, position])
        x0, y0 = min(w[0] for w in group), min(w[1] for w in group)
        x1, y1 = max(w[2] for w in group), max(w[3] for w in group)
        lines["text"].append(" ".join(w[4] for w in group))
        lines["bbox"].append(_box(x0, y0, x1, y1, width, height))
        lines["score"].append(1.0)
        lines["word_slice"].append([start, len(out_words["text"])])
    return {"images_bbox": [], "images_bbox_no_text_overlap": [], "lines": lines,
            "words": out_words}


def _box(x0: float, y0: float, x1: float, y1: float, width: float, height: float) -> list:
    return [round(x0 / width, 5), round(y0 / height, 5), round((x1 - x0) / width, 5),
            round((y1 - y0) / height, 5)]


# PDF 32000-1, 7.6.3.3: the padding string of the standard security handler.
_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + key[i % len(key)]) % 256
        state[i], state[j] = state[j], state[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        out.append(byte ^ state[(state[i] + state[j]) % 256])
    return bytes(out)


def encrypted_pdf(text: str, user_password: str, owner_password: str = "owner") -> bytes:
    """A one-page PDF whose content opens only with `user_password` (RC4, 40-bit key)."""
    file_id = hashlib.md5(text.encode()).digest()
    user_padded = (user_password.encode() + _PAD)[:32]
    owner_key = hashlib.md5((owner_password.encode() + _PAD)[:32]).digest()[:5]
    owner_entry = _rc4(owner_key, user_padded)
    permissions = (-4).to_bytes(4, "little", signed=True)
    key = hashlib.md5(user_padded + owner_entry + permissions + file_id).digest()[:5]
    user_entry = _rc4(key, _PAD)
    stream_key = hashlib.md5(key + (4).to_bytes(3, "little") + (0).to_bytes(2, "little")).digest()
    stream = _rc4(stream_key[:10], f"BT /F1 {FONT_SIZE} Tf 20 200 Td ({text}) Tj ET".encode())
    encrypt = b"<</Filter/Standard/V 1/R 2/O<%s>/U<%s>/P -4>>" % (
        owner_entry.hex().encode(), user_entry.hex().encode())
    return _assemble([
        b"<</Type/Catalog/Pages 2 0 R>>",
        b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
        b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %d %d]/Contents 4 0 R"
        b"/Resources<</Font<</F1 5 0 R>>>>>>" % PAGE_SIZE,
        b"<</Length %d>>stream\n%s\nendstream" % (len(stream), stream),
        b"<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>",
        encrypt,
    ], b"/Encrypt 6 0 R/ID[<%s><%s>]" % (file_id.hex().encode(), file_id.hex().encode()))


def zero_page_pdf() -> bytes:
    """A well-formed PDF whose page tree is empty (PyMuPDF cannot save one itself)."""
    return _assemble([b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[]/Count 0>>"])


def garbage_pdf(rng: np.random.Generator) -> bytes:
    """A PDF header followed by noise: no objects, no cross-reference table."""
    return b"%PDF-1.7\n" + rng.bytes(512)


def _assemble(objects: list[bytes], trailer_extra: bytes = b"") -> bytes:
    """Objects numbered from 1, a cross-reference table with their offsets, and a trailer."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<</Size %d/Root 1 0 R%s>>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, trailer_extra, xref)
    return bytes(out)
