"""The built-in first step of every job: rejects rows no later step can use.

Reasons: ``input:null_text``, ``input:invalid_utf8`` (bytes that are not UTF-8),
``input:empty_text`` (empty or whitespace only) and ``input:too_long`` (more than
``max_doc_bytes`` bytes, default 10 MB: a 50 MB "document" is almost always a dump of a table
or a binary blob, and it would dominate a worker's memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.io.reader import INVALID_UTF8, TEXT
from curation.step import Filter, FilterResult


@dataclass
class InputCheckConfig:
    """Options of the input check."""

    max_doc_bytes: int = 10_000_000
    """Documents longer than this many UTF-8 bytes are rejected as ``too_long``."""

    def __post_init__(self) -> None:
        if self.max_doc_bytes <= 0:
            raise ValueError(f"max_doc_bytes must be > 0 (got {self.max_doc_bytes})")


class InputCheck(Filter):
    """Rejects null, undecodable, empty and oversized documents."""

    name: ClassVar[str] = "input"
    Config: ClassVar[type] = InputCheckConfig

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        text = batch.column(TEXT)
        n = batch.num_rows
        null = pc.is_null(text).to_numpy(zero_copy_only=False)
        invalid = pc.fill_null(pc.equal(text, INVALID_UTF8), False).to_numpy(zero_copy_only=False)
        empty = pc.fill_null(pc.utf8_is_space(text), False).to_numpy(zero_copy_only=False)
        empty |= pc.fill_null(pc.equal(pc.binary_length(text), 0), False).to_numpy(
            zero_copy_only=False)
        long = pc.fill_null(pc.greater(pc.binary_length(text), self.config.max_doc_bytes),
                            False).to_numpy(zero_copy_only=False)
        reason = np.full(n, "", dtype=object)
        reason[long] = "too_long"
        reason[empty] = "empty_text"
        reason[invalid] = "invalid_utf8"
        reason[null] = "null_text"
        keep = ~(null | invalid | empty | long)
        if invalid.any():  # keep the sentinel out of the rejected rows' text
            batch_text = pc.if_else(pa.array(invalid), pa.scalar(None, pa.string()), text)
            return FilterResult(keep=keep, reason=pa.array(reason, pa.string()),
                                columns={TEXT: batch_text})
        return FilterResult(keep=keep, reason=pa.array(reason, pa.string()))
