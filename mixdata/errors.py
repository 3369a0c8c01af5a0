"""Errors and the reject record shared by every pipeline step."""
from __future__ import annotations

from dataclasses import asdict, dataclass


class MixdataError(Exception):
    """A user-facing error: the message says what went wrong and what to do."""


class RecipeError(MixdataError):
    """A recipe (or config) that fails validation.

    The message always names the file, the key path, what was found and what was expected.
    """

    def __init__(self, key: str, found: object, expected: str, file: str | None = None):
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


class UnitDamaged(MixdataError):
    """Reading one input unit (a tar, a parquet file, a jsonl file) stopped at damage.

    Raised by a reader after it has yielded every record before the damage; the build turns
    it into one Reject whose locator is the unit and the place (`where`: a byte offset or the
    last key read) where reading stopped. `reason` is one of `UNIT_REASONS`.
    """

    def __init__(self, reason: str, unit: str, message: str, where: str = ""):
        self.reason, self.unit, self.message, self.where = reason, unit, message, where
        at = f" ({where})" if where else ""
        super().__init__(f"{unit}{at}: {reason}: {message}")

    @property
    def locator(self) -> str:
        return f"{self.unit}@{self.where}" if self.where else self.unit


# unit_empty: zero bytes; unit_truncated: cut short (a tar without its end, a gzip stream that
# stops); unit_unreadable: not the format its name says; unit_unreachable: a remote read that
# failed after every retry.
UNIT_REASONS = ("unit_empty", "unit_truncated", "unit_unreadable", "unit_unreachable")


class RecordRejected(Exception):
    """Raised inside a pure step to reject the current record; wrappers turn it into a Reject."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason, self.message = reason, message
