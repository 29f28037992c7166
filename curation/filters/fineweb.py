"""FineWeb's line-level quality filter (Penedo et al. 2024): punctuation, short lines, repeats.

Defaults are datatrove's ``FineWebQualityFilter``, the code that built FineWeb. Lines are the
non-blank lines of the text (split on ``\\n``, lines of only whitespace dropped), measured as they
are (a trailing space means the line does not end with punctuation, as in datatrove).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from curation.filters import text_stats as ts
from curation.registry import register
from curation.step import Filter, FilterResult


@dataclass
class FineWebQualityConfig:
    """Options of the ``fineweb`` step; a threshold of None turns its rule off."""

    line_punct_thr: float | None = 0.12
    """Reject when fewer than this fraction of lines end with ``terminal_punctuation``
    (published: 0.12)."""
    line_punct_exclude_zero: bool = False
    """Keep documents where no line at all ends with punctuation (published: False)."""
    terminal_punctuation: str = ".'\"!?"
    """Characters that end a punctuated line (published: ``. ' " ! ?``)."""
    short_line_thr: float | None = 0.67
    """Reject when more than this fraction of lines are short (published: 0.67)."""
    short_line_length: int = 30
    """A line of at most this many characters is short (published: 30)."""
    char_duplicates_ratio: float | None = 0.01
    """Reject when repeated lines hold more than this fraction of the characters, newlines not
    counted (published: 0.01 in datatrove and FineWeb's appendix; the paper's main text says
    0.1)."""
    new_line_ratio: float | None = 0.3
    """Reject as a list when there are more than this many newlines per word (published: 0.3)."""

    def __post_init__(self) -> None:
        for name in ("line_punct_thr", "short_line_thr", "char_duplicates_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] or None (rule off), got {value}")
        if self.new_line_ratio is not None and self.new_line_ratio < 0:
            raise ValueError(f"new_line_ratio must be >= 0 or None, got {self.new_line_ratio}")
        if self.short_line_length < 0:
            raise ValueError(f"short_line_length must be >= 0, got {self.short_line_length}")
        if not self.terminal_punctuation:
            raise ValueError("terminal_punctuation is empty; give the characters that end a "
                             "sentence or set line_punct_thr to None")


@register
class FineWebQuality(Filter):
    """FineWeb's rules; the first rule a document fails is its reason.

    Rules, in datatrove's order (reason: rejected when):

    0. ``fineweb_empty_doc``: no non-blank line (null, empty or whitespace text)
    1. ``fineweb_line_punct_ratio``: lines ending with terminal punctuation / lines < 0.12
    2. ``fineweb_short_line_ratio``: lines of <= 30 characters / lines > 0.67
    3. ``fineweb_char_dup_ratio``: characters in repeated lines (every occurrence after the
       first) / characters of the text without newlines > 0.01
    4. ``fineweb_list_ratio``: newlines / words > 0.3

    Signal columns (float32): ``fineweb_line_punct_ratio``, ``fineweb_short_line_ratio``,
    ``fineweb_char_dup_ratio``, ``fineweb_newline_ratio``; 0 for empty documents.

    A statistic equal to its limit passes, as in datatrove today (its first versions rejected at
    equality). Words are whitespace-separated (datatrove tokenizes with NLTK/spaCy, which makes a
    separate word of each punctuation mark, so its newline ratio is lower on the same text).
    """

    name: ClassVar[str] = "fineweb"
    Config: ClassVar[type] = FineWebQualityConfig

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        cfg = self.config
        text, has_text = ts.document_text(batch, self.name)
        every_line = ts.lines(text)
        lines = every_line.select(every_line.values.str.contains(r"\S").to_numpy())
        n_lines = lines.per_row()
        punctuated = lines.values.str.slice(-1, 1).is_in(list(cfg.terminal_punctuation))
        line_punct_ratio = ts.ratio(lines.per_row(punctuated.to_numpy()), n_lines)
        short = lines.chars() <= cfg.short_line_length
        short_line_ratio = ts.ratio(lines.per_row(short), n_lines)
        _, repeated_chars = ts.duplicate_counts(lines)
        newlines = text.str.count_matches("\n", literal=True).to_numpy().astype(np.float64)
        chars = text.str.len_chars().to_numpy() - newlines
        char_dup_ratio = ts.ratio(repeated_chars, chars)
        newline_ratio = ts.ratio(newlines, ts.word_count(text))

        punct_fails = np.zeros(batch.num_rows, bool)
        if cfg.line_punct_thr is not None:
            punct_fails = line_punct_ratio < cfg.line_punct_thr
            if cfg.line_punct_exclude_zero:
                punct_fails &= line_punct_ratio > 0

        over = ts.over_limit
        keep, reason = ts.first_failure([
            ("fineweb_empty_doc", ~has_text),
            ("fineweb_line_punct_ratio", punct_fails),
            ("fineweb_short_line_ratio", over(short_line_ratio, cfg.short_line_thr)),
            ("fineweb_char_dup_ratio", over(char_dup_ratio, cfg.char_duplicates_ratio)),
            ("fineweb_list_ratio", over(newline_ratio, cfg.new_line_ratio)),
        ], batch.num_rows)
        columns = {
            f"{self.name}_line_punct_ratio": pa.array(line_punct_ratio.astype(np.float32)),
            f"{self.name}_short_line_ratio": pa.array(short_line_ratio.astype(np.float32)),
            f"{self.name}_char_dup_ratio": pa.array(char_dup_ratio.astype(np.float32)),
            f"{self.name}_newline_ratio": pa.array(newline_ratio.astype(np.float32)),
        }
        return FilterResult(keep=keep, reason=reason, columns=columns)
