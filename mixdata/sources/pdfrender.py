"""Rendering PDF pages in a child process, so that a page past its time budget can be stopped.

Why a process: PyMuPDF holds the GIL while it rasterises and its Python API exposes no abort
hook, so neither a watchdog thread nor a signal can stop a page that takes a minute (a single
path of 60,000 strokes takes about that). Killing a process always works.

`PageRenderer` keeps one worker per reader. A document is one request (the PDF and the pages
wanted); the worker renders those pages in order and sends one reply per page, so it never
waits on the reader between pages. Each page has its own deadline, counted from the previous
reply. When a page runs past it, the worker is killed, the page fails with `page_timeout`, and
a fresh worker renders the rest of the document.

Workers are forked from a forkserver with PyMuPDF preloaded, so starting one takes
milliseconds. Like every multiprocessing start method but fork, the forkserver imports the
main module of the program (as `__mp_main__`): scripts need the usual
`if __name__ == "__main__":` guard. A worker that cannot start raises MixdataError.
"""
from __future__ import annotations

import io
import multiprocessing
from collections.abc import Iterator

from PIL import Image

from ..errors import MixdataError, RecordRejected
from ..lifeline import die_with_parent
from .mupdf import pymupdf

JPEG_QUALITY = 90
STARTUP_TIMEOUT_S = 60.0   # a forked worker answers in milliseconds; spawn takes ~1 s


def page_pixels(rect, dpi: int) -> int:
    """Pixels a page of `rect` (points, 1/72 inch) has at `dpi`, known before rendering."""
    scale = dpi / 72.0
    return round(rect.width * scale) * round(rect.height * scale)


def render_page(page, dpi: int, grayscale: bool = False) -> tuple[bytes, int, int]:
    """Rasterise one page at `dpi` and JPEG-encode it: `(jpeg bytes, width, height)`.

    Pillow encodes: its libjpeg-turbo is about 10x faster than `Pixmap.tobytes("jpeg")`, and
    encoding, not rasterising, is most of a text page's cost.
    """
    colorspace = pymupdf.csGRAY if grayscale else pymupdf.csRGB
    pix = page.get_pixmap(dpi=dpi, colorspace=colorspace, alpha=False)
    mode = "L" if grayscale else "RGB"
    image = Image.frombuffer(mode, (pix.width, pix.height), pix.samples_mv, "raw", mode,
                             pix.stride, 1)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), pix.width, pix.height


def serve(conn) -> None:
    """The worker loop. Request: `(pdf bytes, [page, ...], dpi, grayscale)`; one reply per
    page, `{"page", "data", "width", "height"}` or `{"page", "error"}`, until EOF. The worker
    dies with its parent (the forkserver, which itself ends with the reader's process)."""
    die_with_parent()
    pymupdf.TOOLS.mupdf_display_errors(False)  # failures travel back as replies instead
    conn.send({"ready": True})
    while True:
        try:
            pdf, pages, dpi, grayscale = conn.recv()
        except EOFError:
            return
        try:
            doc = pymupdf.open(stream=pdf, filetype="pdf")
        except Exception as err:  # noqa: BLE001 - reported for every page asked for
            for page in pages:
                conn.send({"page": page, "error": f"{type(err).__name__}: {err}"})
            continue
        with doc:
            for page in pages:
                conn.send(_render_reply(doc, page, dpi, grayscale))


def _render_reply(doc, page: int, dpi: int, grayscale: bool) -> dict:
    try:
        data, width, height = render_page(doc.load_page(page), dpi, grayscale)
    except Exception as err:  # noqa: BLE001 - every failure is reported to the parent
        return {"page": page, "error": f"{type(err).__name__}: {err}"}
    return {"page": page, "data": data, "width": width, "height": height}


def _context():
    """forkserver: each worker is forked from a clean, single-threaded server that has
    PyMuPDF imported already, so a worker starts in milliseconds (spawn: about a second)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class PageRenderer:
    """Renders the pages of one document at a time in a worker process, each page under a
    deadline. Use as a context manager; the worker starts on first use and stops on exit."""

    def __init__(self, timeout_s: float, dpi: int, grayscale: bool = False):
        self.timeout_s, self.dpi, self.grayscale = timeout_s, dpi, grayscale
        self._proc = self._conn = None

    def __enter__(self) -> PageRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def render(self, pdf: bytes, pages: list[int]
               ) -> Iterator[tuple[int, tuple[bytes, int, int] | RecordRejected]]:
        """`(page, (jpeg, width, height))` for each of `pages` in order, or `(page,
        RecordRejected)` with reason `page_timeout` or `page_broken`. Consume it fully."""
        pending, in_flight = list(pages), False
        try:
            while pending:
                self._start()
                self._conn.send((pdf, pending, self.dpi, self.grayscale))
                batch, pending = pending, []
                for done, page in enumerate(batch, 1):
                    outcome = self._receive(page)
                    killed = self._proc is None
                    if killed:   # a fresh worker renders the rest of the document
                        pending = batch[done:]
                    in_flight = not killed and done < len(batch)
                    yield page, outcome
                    if killed:
                        break
        finally:
            if in_flight:   # replies still on their way would answer the next document
                self.close(kill=True)

    def _receive(self, page: int) -> tuple[bytes, int, int] | RecordRejected:
        try:
            if not self._conn.poll(self.timeout_s):
                self.close(kill=True)
                return RecordRejected("page_timeout", f"page {page} took over "
                                      f"{self.timeout_s:g} s to render at {self.dpi} dpi")
            reply = self._conn.recv()
        except (EOFError, ConnectionResetError):
            self.close(kill=True)
            return RecordRejected("page_broken", f"page {page} crashed the renderer")
        if "error" in reply:
            return RecordRejected("page_broken", reply["error"])
        return reply["data"], reply["width"], reply["height"]

    def _start(self) -> None:
        if self._proc is not None:
            return
        context = _context()
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=serve, args=(child,), daemon=True,
                                     name="mixdata-pdf-render")
        self._proc.start()
        child.close()
        try:
            ready = self._conn.poll(STARTUP_TIMEOUT_S) and self._conn.recv()
        except (EOFError, ConnectionResetError):
            ready = False
        if not ready:
            code = self._proc.exitcode
            self.close(kill=True)
            raise MixdataError(f"the PDF render worker did not start (exit code {code}); "
                               "see its traceback above")

    def close(self, kill: bool = False) -> None:
        """Stop the worker: closing the pipe ends its loop; kill it if asked or if it hangs."""
        if self._proc is None:
            return
        self._conn.close()
        if kill:
            self._proc.kill()
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._proc.close()
        self._proc = self._conn = None
