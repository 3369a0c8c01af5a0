"""OCR kinds of the demo corpus: a pdfa-eng-wds tar, a folder of raw PDFs, a RenderedText tar.

Pages carry ~9-10 px text and the RenderedText images short digit codes
(`content.draw_code`): legible to a model only at the high-resolution stages' tile size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import content, pages
from .files import (
    KindReport,
    broken_image,
    broken_slots,
    json_bytes,
    png_bytes,
    tar_shards,
    write_bytes,
)


def _document_pages(rng: np.random.Generator) -> list[list[str]]:
    return [pages.text_page_lines(rng) for _ in range(int(rng.integers(2, 4)))]


PDFA_PER_TAR = 40            # one tar at scale 1
RENDEREDTEXT_PER_TAR = 3000  # one tar at scale 1


def write_pdfa(root: Path, count: int, rng: np.random.Generator) -> KindReport:
    """`pdfa/pdfa-eng-train-NNNN.tar`, `PDFA_PER_TAR` documents each: `KEY.pdf` +
    `KEY.json` with 7-digit keys. `extra.pages` counts the pages of the well-formed documents."""
    report = KindReport()
    defects = broken_slots(rng, count, ["not_a_pdf", "missing_json"])
    page_count = 0
    for index, tar in tar_shards(root / "pdfa", "pdfa-eng-train-{:04d}.tar", count,
                                 PDFA_PER_TAR):
        key, defect = f"{index:07d}", defects.get(index)
        data, annotation = pages.make_pdf(_document_pages(rng), rng)
        if defect == "not_a_pdf":
            data = pages.garbage_pdf(rng)
        elif defect is None:
            page_count += len(annotation)
        tar.add(f"{key}.pdf", data)
        if defect != "missing_json":
            tar.add(f"{key}.json", json_bytes({"pages": annotation}))
        report.add(defect)
    report.extra["pages"] = page_count
    return report


def write_pdf(root: Path, count: int, rng: np.random.Generator) -> KindReport:
    """`pdf/doc-NNNN.pdf` (multi-page, text layer) plus broken ones: encrypted, zero pages,
    garbage. `doc-0001.pdf` ends with a scanned page (no text layer), counted under
    `extra.pages_without_text`; the document itself is valid."""
    report = KindReport()
    folder = root / "pdf"
    broken = {"encrypted": pages.encrypted_pdf(content.sentence(rng), "demo-password"),
              "zero_pages": pages.zero_page_pdf(), "not_a_pdf": pages.garbage_pdf(rng)}
    page_count = 0
    for index in range(max(2, count - len(broken))):
        scan = png_bytes(content.draw_scene(content.random_scene(rng, 2), rng)) \
            if index == 1 else None
        data, annotation = pages.make_pdf(_document_pages(rng), rng, scan_page=scan)
        write_bytes(folder / f"doc-{index:04d}.pdf", data)
        page_count += len(annotation)
        report.add()
    for defect, data in broken.items():
        write_bytes(folder / f"{defect.replace('_', '-')}.pdf", data)
        report.add(defect)
    report.extra.update(pages=page_count, pages_without_text=1)
    return report


def write_renderedtext(root: Path, count: int, rng: np.random.Generator) -> KindReport:
    """`renderedtext/renderedtext-NNNN.tar`, `RENDEREDTEXT_PER_TAR` records each: `KEY.png`
    + `KEY.json` holding `{"ocr_annotation": {"text": [code, ...]}}`: a training-split
    code printed in each token row of each 64 px tile (`content.code_label`), transcribed
    once per tile as RenderedText lists each word: the demo's reading lesson."""
    report = KindReport()
    defects = broken_slots(rng, count, ["image_broken", "missing_field"])
    for index, tar in tar_shards(root / "renderedtext", "renderedtext-{:04d}.tar", count,
                                 RENDEREDTEXT_PER_TAR):
        key, defect = f"{index:07d}", defects.get(index)
        label = content.random_code_label(rng)
        image = png_bytes(content.draw_code(*label))
        annotation = {"ocr_annotation": {"text": [r.code for r in label if r.row == 0]},
                      "image_size": list(content.CODE_SIZE)}
        if defect == "image_broken":
            image = broken_image(rng)
        elif defect == "missing_field":
            del annotation["ocr_annotation"]
        tar.add(f"{key}.png", image)
        tar.add(f"{key}.json", json_bytes(annotation))
        report.add(defect)
    return report
