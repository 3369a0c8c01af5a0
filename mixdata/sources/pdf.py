"""OCR sources: PDF pages (pdfa-wds, idl-wds, raw PDF files) and RenderedText tars.

A PDF page becomes one `ocr` Sample: [ImagePart(JPEG of the page at `dpi`), TextPart(its
lines joined by "\\n")]. The text comes from the JSON annotations (pdfa: `pages[i].lines.text`,
idl: `pages[i].text`) or, for raw PDFs, from the page's text layer (`page.get_text`).

Accounting. The record read is a PDF document, counted page by page:
- a readable document yields one item per page it reads (its first `max_pages`, else all):
  a Sample, or a Reject whose locator names the page (`…#page=3`) with reason
  `page_too_large` (width × height at `dpi` over `max_page_pixels`, checked before rendering),
  `page_timeout` (rendering ran past `page_timeout_s`; the worker process is killed),
  `page_broken`, `no_text` (empty annotation) or `no_text_layer` (raw scan), the last two
  only without `keep_scans`;
- a document that cannot be used as a whole yields exactly one Reject: `pdf_broken`,
  `pdf_encrypted`, `pdf_empty`, `page_count_mismatch` (annotation pages ≠ PDF pages),
  `missing_member`, `bad_json` or `missing_field`.
So the records read count the read pages of readable documents plus one per unusable
document, and read = yielded + rejected holds per unit.
"""
from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec

from ..errors import RecordRejected, Reject
from ..sample import ImagePart, Sample, TextPart
from ..storage import expand, read_bytes
from .mupdf import pymupdf
from .pdfrender import PageRenderer, page_pixels
from .records import RecordSource, TarRecordSource, file_stem, parse_json, require
from .tario import iter_tar_groups

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def open_pdf(data: bytes) -> pymupdf.Document:
    """A readable, unlocked PDF with at least one page, or RecordRejected saying why not."""
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as err:  # noqa: BLE001 - PyMuPDF raises several types for bad files
        raise RecordRejected("pdf_broken", f"{type(err).__name__}: {err}") from None
    if doc.needs_pass:
        doc.close()
        raise RecordRejected("pdf_encrypted", "the PDF needs a password")
    if doc.page_count == 0:
        doc.close()
        raise RecordRejected("pdf_empty", "the PDF has no pages")
    return doc


def annotation_pages(raw: bytes) -> list:
    """The `pages` list of a pdfa/idl JSON member (RecordRejected `bad_json`/`missing_field`)."""
    doc = parse_json(raw, "json")
    if not isinstance(doc, dict) or not isinstance(doc.get("pages"), list):
        raise RecordRejected("missing_field", "the JSON has no 'pages' list")
    return doc["pages"]


def page_lines(page: object, fmt: str) -> list[str]:
    """The text lines of one annotated page: pdfa `lines.text`, idl `text`."""
    if not isinstance(page, dict):
        raise RecordRejected("missing_field", f"page annotation is a {type(page).__name__}")
    holder = page.get("lines") if fmt == "pdfa-wds" else page
    lines = holder.get("text") if isinstance(holder, dict) else None
    if not isinstance(lines, list) or not all(isinstance(x, str) or x is None for x in lines):
        field = "lines.text" if fmt == "pdfa-wds" else "text"
        raise RecordRejected("missing_field", f"page annotation has no list of strings {field!r}")
    return [line for line in lines if line]


def ocr_sample(source: str, sample_id: str, locator: str, image: ImagePart, text: str,
               meta: dict) -> Sample:
    parts = (image, TextPart(text=text)) if text else (image,)
    return Sample(id=sample_id, source=source, kind="ocr", parts=parts,
                  meta={**meta, "locator": locator})


class _PdfPages(RecordSource):
    """Shared page loop of the PDF adapters; see the module docstring for the accounting."""

    def document(self, renderer: PageRenderer, pdf: bytes | None, key: str, locator: str,
                 annotations: bytes | None = None, annotated: bool = False
                 ) -> Iterator[Sample | Reject]:
        try:
            if pdf is None or (annotated and annotations is None):
                raise RecordRejected("missing_member", "needs both a .pdf and a .json member"
                                     if annotated else "no PDF")
            pages = annotation_pages(annotations) if annotated else None
            doc = open_pdf(pdf)
        except RecordRejected as err:
            yield self.reject(locator, err.reason, err.message)
            return
        with doc:
            if pages is not None and len(pages) != doc.page_count:
                yield self.reject(locator, "page_count_mismatch", f"the JSON annotates "
                                  f"{len(pages)} pages, the PDF has {doc.page_count}")
                return
            count = min(doc.page_count, self.options.max_pages or doc.page_count)
            texts = [self._page_text(doc, index, pages) for index in range(count)]
            wanted = [i for i, text in enumerate(texts) if isinstance(text, str)]
            rendered = renderer.render(pdf, wanted)
            for index, text in enumerate(texts):
                page_locator = f"{locator}#page={index}"
                outcome = next(rendered)[1] if isinstance(text, str) else text
                if isinstance(outcome, RecordRejected):
                    yield self.reject(page_locator, outcome.reason, outcome.message)
                    continue
                jpeg, width, height = outcome
                image = ImagePart(data=jpeg, meta={"width": width, "height": height,
                                                   "format": "jpeg", "page": index,
                                                   "dpi": self.options.dpi})
                yield ocr_sample(self.name, f"{key}/p{index}", page_locator, image, text,
                                 {"doc": key, "page": index, "pages": doc.page_count})

    def _page_text(self, doc, index: int, pages: list | None) -> str | RecordRejected:
        """A page's text when the page is worth rendering, else why not (checked before any
        rendering: text, then size)."""
        opts = self.options
        try:
            page = doc.load_page(index)
            if pages is None:
                text, missing = page.get_text().strip(), "no_text_layer"
            else:
                text, missing = "\n".join(page_lines(pages[index], self.spec.format)), "no_text"
            pixels = page_pixels(page.rect, opts.dpi)
        except RecordRejected as err:
            return err.with_traceback(None)   # a kept traceback would keep this frame alive
        except Exception as err:  # noqa: BLE001 - MuPDF reports damaged pages variously
            return RecordRejected("page_broken", f"{type(err).__name__}: {err}")
        if not text and not opts.keep_scans:
            return RecordRejected(missing, f"page {index} has no text")
        if pixels > opts.max_page_pixels:
            return RecordRejected("page_too_large", f"page {index} would be {pixels} px at "
                                  f"{opts.dpi} dpi (max_page_pixels {opts.max_page_pixels})")
        return text

    def __init__(self, spec) -> None:
        super().__init__(spec)
        # Idle render workers, reused across units: starting one per small PDF file would
        # cost more than rendering it. Each read borrows its own, so reads may interleave.
        self._idle: list[PageRenderer] = []
        weakref.finalize(self, _close_all, self._idle)

    @contextmanager
    def renderer(self) -> Iterator[PageRenderer]:
        renderer = self._idle.pop() if self._idle else PageRenderer(
            self.options.page_timeout_s, self.options.dpi, self.options.grayscale)
        try:
            yield renderer
        finally:
            self._idle.append(renderer)

    def close(self) -> None:
        """Stop the idle render workers now (they also stop when the source is collected)."""
        _close_all(self._idle)


def _close_all(renderers: list[PageRenderer]) -> None:
    while renderers:
        renderers.pop().close()


class PdfWdsSource(_PdfPages):
    """`pdfa-wds` and `idl-wds`: tars of `KEY.pdf` + `KEY.json`; units are tars."""

    def units(self) -> list[str]:
        return expand(self.spec.uri)

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        with self.renderer() as renderer:
            stem = file_stem(unit)
            for key, members, locator in iter_tar_groups(unit, self.counter):
                if isinstance(members, RecordRejected):
                    yield self.reject(locator, members.reason, members.message)
                    continue
                yield from self.document(renderer, members.get("pdf"), f"{stem}-{key}", locator,
                                         members.get("json"), annotated=True)


class RawPdfSource(_PdfPages):
    """`pdf`: PDF files, folders of them (searched recursively) or URLs; one unit per file."""

    def units(self) -> list[str]:
        return [pdf for url in expand(self.spec.uri) for pdf in _pdf_files(url)]

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        with self.renderer() as renderer:
            # the stem names the document; the hash keeps same-named files in different
            # folders apart
            digest = hashlib.sha1(unit.encode()).hexdigest()[:8]
            key = f"{file_stem(unit).removesuffix('.pdf')}-{digest}"
            yield from self.document(renderer, read_bytes(unit, self.counter), key, unit)


def _pdf_files(url: str) -> list[str]:
    """`url` itself, or every `*.pdf` below it when it is a folder (sorted)."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.isdir(path):
        return [url]
    found = sorted(p for p in fs.find(path) if p.lower().endswith(".pdf"))
    return found if "://" not in url else [fs.unstrip_protocol(p) for p in found]


def renderedtext_parts(record: dict) -> list:
    """A RenderedText record `{png: bytes, json: {ocr_annotation: {text}}}` -> [image, text].

    The image may also come as `jpg`/`webp`, or as HF's `{bytes, path}`; the text is a list
    of lines (or one string).
    """
    image = next((record[ext] for ext in IMAGE_EXTS if record.get(ext) is not None), None)
    if isinstance(image, dict):
        image = image.get("bytes")
    if not isinstance(image, bytes):
        raise RecordRejected("missing_member", "no image member (png/jpg/webp)")
    meta = parse_json(require(record, "json"), "json")
    annotation = meta.get("ocr_annotation") if isinstance(meta, dict) else None
    text = annotation.get("text") if isinstance(annotation, dict) else None
    if isinstance(text, list) and all(isinstance(t, str) for t in text):
        text = "\n".join(t for t in text if t)
    if not isinstance(text, str):
        raise RecordRejected("missing_field", "no ocr_annotation.text")
    if not text.strip():
        raise RecordRejected("no_text", "ocr_annotation.text is empty")
    return [ImagePart(data=image), TextPart(text=text)]


class RenderedTextSource(TarRecordSource):
    """`renderedtext`: tars of `KEY.png` + `KEY.json`; units are tars."""

    def record_sample(self, record: dict, sample_id: str, locator: str) -> Sample:
        return Sample(id=sample_id, source=self.name, kind="ocr",
                      parts=tuple(renderedtext_parts(record)), meta={"locator": locator})
