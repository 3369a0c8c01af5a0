"""The source adapter contract.

An adapter reads one public format. It lists its input units (files, tar shards, row groups)
in a deterministic order, and reads one unit at a time, yielding a `Sample` or a `Reject` for
every record it reads, so that read = yielded + rejected holds per unit. Constructors do no
I/O; adapters stream and never hold a whole tar or parquet file in memory.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from ..errors import Reject
from ..sample import Sample
from ..storage import RetryCounter


class Source(ABC):
    """Base class of every adapter. `spec` is the recipe's `SourceSpec`."""

    def __init__(self, spec) -> None:
        self.spec = spec
        self.name: str = spec.name
        self.options = spec.options
        self.counter = RetryCounter()  # transient-error retries over every unit this reads

    @property
    def retries(self) -> int:
        """Retries so far, across units; the build records it per unit."""
        return self.counter.retries

    @abstractmethod
    def units(self) -> list[str]:
        """Input units in a deterministic order (expanding globs and brace ranges)."""

    @abstractmethod
    def read(self, unit: str) -> Iterator[Sample | Reject]:
        """Every record of `unit`, in order: a Sample, or a Reject saying why not."""

    def reject(self, locator: str, reason: str, message: str = "") -> Reject:
        return Reject(source=self.name, locator=locator, reason=reason, message=message)
