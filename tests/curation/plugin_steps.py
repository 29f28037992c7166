"""Steps used only by the tests, loaded through the job config's ``plugins`` list."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from curation.registry import register
from curation.step import Filter, FilterResult, Step


@dataclass
class SlowConfig:
    seconds_per_batch: float = 0.05


@register
class Slow(Step):
    """Sleeps per batch so a test can kill a job mid-way."""

    name: ClassVar[str] = "test_slow"
    Config: ClassVar[type] = SlowConfig

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        time.sleep(self.config.seconds_per_batch)
        return batch


@dataclass
class MinCharsConfig:
    min_chars: int = 20


@register
class MinChars(Filter):
    """Rejects documents shorter than ``min_chars`` characters."""

    name: ClassVar[str] = "test_min_chars"
    Config: ClassVar[type] = MinCharsConfig

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        length = pc.utf8_length(batch.column("text"))
        return FilterResult(keep=pc.greater_equal(length, self.config.min_chars),
                            reason="too_short", columns={"chars": length})


@register
class Explode(Step):
    """Raises on a document containing 'EXPLODE' (a step bug, for quarantine tests)."""

    name: ClassVar[str] = "test_explode"

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if pc.any(pc.match_substring(batch.column("text"), "EXPLODE")).as_py():
            raise RuntimeError("boom")
        return batch
