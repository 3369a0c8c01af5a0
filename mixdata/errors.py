"""Errors and the reject record shared by every pipeline step."""
from __future__ import annotations

from dataclasses import asdict, dataclass


class MixdataError(Exception):
    """A user-facing error: the message says what went wrong and what to do."""


class RecipeError(MixdataError):
    """A recipe (or config) that fails validation.

    The message always names the file, the key path, what was found and what was expected.
    """

    def __init__(self, path: str, key: str, found: object, expected: str, file: str | None = None):
        self.file, self.key, self.found, self.expected = file, key, found, expected
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{key or '<root>'}: found {_show(found)}, expected {expected}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True, kw_only=True)
class Reject:
    """One input record that did not make it into a sample.

    `locator` pins the record down (file plus row, or tar member); `reason` is a short code
    that manifests count by; `message` is the human explanation.
    """

    source: str
    locator: str
    reason: str
    message: str = ""

    def to_json(self) -> dict:
        return asdict(self)


class RecordRejected(Exception):
    """Raised inside a pure step to reject the current record; wrappers turn it into a Reject."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason, self.message = reason, message
