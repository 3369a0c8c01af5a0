"""Rendering PDF pages in a child process, so that a page past its time budget can be stopped.

Why a process: PyMuPDF holds the GIL while it rasterises and its Python API exposes no abort
hook, so neither a watchdog thread nor a signal can stop a page that takes a minute (a single
path of 60,000 strokes takes about that). Killing a process always works. `PageRenderer` keeps
one worker per reader: a document is sent once, then each page is one request answered with
JPEG bytes. When a page runs past its deadline the worker is killed, the page fails with
`page_timeout`, and the next page starts a fresh worker.

Workers are forked from a forkserver with PyMuPDF preloaded, so starting one is cheap.
"""
from __future__ import annotations

import io
import multiprocessing
import time

import pymupdf
from PIL import Image

from ..errors import RecordRejected

JPEG_QUALITY = 90


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
    """The worker loop: `("open", pdf bytes)` and `("render", page, dpi, grayscale)` requests,
    each answered with a dict, until the parent closes its end."""
    pymupdf.TOOLS.mupdf_display_errors(False)  # failures travel back as replies instead
    doc = None
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        try:
            if request[0] == "open":
                doc = pymupdf.open(stream=request[1], filetype="pdf")
                conn.send({"pages": doc.page_count})
            else:
                data, width, height = render_page(doc.load_page(request[1]), *request[2:])
                conn.send({"data": data, "width": width, "height": height})
        except Exception as err:  # noqa: BLE001 - every failure is reported to the parent
            conn.send({"error": f"{type(err).__name__}: {err}"})


def _context():
    """forkserver: each worker is forked from a clean, single-threaded server that has
    PyMuPDF imported already, so a worker starts in milliseconds (spawn: about a second)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class PageRenderer:
    """Renders pages of one document at a time in a worker process, each under a deadline.

    Use as a context manager; the worker starts on the first render and is stopped on exit.
    """

    def __init__(self, timeout_s: float, dpi: int, grayscale: bool = False):
        self.timeout_s, self.dpi, self.grayscale = timeout_s, dpi, grayscale
        self._proc = self._conn = None
        self._pdf: bytes | None = None
        self._pdf_sent = False

    def __enter__(self) -> "PageRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self, pdf: bytes) -> None:
        """Make `pdf` the current document (sent to the worker with the first render)."""
        self._pdf, self._pdf_sent = pdf, False

    def render(self, page: int) -> tuple[bytes, int, int]:
        """`(jpeg, width, height)` of page `page`, or RecordRejected (`page_timeout`,
        `page_broken`)."""
        self._start()
        deadline = time.monotonic() + self.timeout_s
        try:
            if not self._pdf_sent:
                self._ask(("open", self._pdf), deadline)
                self._pdf_sent = True
            reply = self._ask(("render", page, self.dpi, self.grayscale), deadline)
        except TimeoutError:
            self.close(kill=True)
            raise RecordRejected("page_timeout", f"page {page} took over {self.timeout_s:g} s "
                                 f"to render at {self.dpi} dpi") from None
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.close(kill=True)
            raise RecordRejected("page_broken", f"page {page} crashed the renderer") from None
        return reply["data"], reply["width"], reply["height"]

    def _ask(self, request: tuple, deadline: float) -> dict:
        self._conn.send(request)
        if not self._conn.poll(max(0.0, deadline - time.monotonic())):
            raise TimeoutError
        reply = self._conn.recv()
        if "error" in reply:
            raise RecordRejected("page_broken", reply["error"])
        return reply

    def _start(self) -> None:
        if self._proc is not None:
            return
        context = _context()
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=serve, args=(child,), daemon=True,
                                     name="mixdata-pdf-render")
        self._proc.start()
        child.close()
        self._pdf_sent = False

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
