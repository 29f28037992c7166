"""C4's line-level cleaning and page filter (Raffel et al. 2020, ``c4_utils.clean_page``).

Defaults are datatrove's ``C4QualityFilter``, which follows TensorFlow Datasets' C4 code. The step
rewrites ``text`` to the lines it keeps, so it is a filter that also returns a ``text`` column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curation.filters import text_stats as ts
from curation.registry import register
from curation.step import Filter, FilterResult

CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
"""Wikipedia-style citation markers, removed from every line."""
END_PUNCTUATION = ".?!\"'"
"""A kept line ends with one of these, and not with ``...`` (datatrove's set: TFDS's C4 code has
no ``'``)."""
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                     "use of cookies", "use cookies")
"""Lines containing one of these (any case) are boilerplate."""
# A sentence ends at a run of end marks (then closing quotes or brackets) followed by whitespace or
# the end of the line: "3.5" does not end one, "Mr. Smith" does (punkt knows that abbreviation).
_SENTENCE_END = r"[.!?]+[\"'”’)\]]*(?:\s|$)"


@dataclass
class C4QualityConfig:
    """Options of the ``c4`` step; a rule set to False or None is off."""

    remove_citations: bool = True
    """Remove ``[1]``, ``[edit]`` and ``[citation needed]`` from lines (published: True)."""
    filter_no_terminal_punct: bool = True
    """Drop lines that do not end in ``. ? ! " '`` or that end in ``...`` (published: True)."""
    min_num_sentences: int | None = 5
    """Reject pages with fewer sentences in their kept lines (published: 5 in datatrove; TFDS's
    code that built C4 uses 3)."""
    min_words_per_line: int | None = 3
    """Drop lines with fewer whitespace-separated words (published: 3 in datatrove; TFDS's C4
    code uses 5)."""
    max_word_length: int | None = 1000
    """Drop lines with a word longer than this many characters (published: 1000)."""
    filter_lorem_ipsum: bool = True
    """Reject pages with "lorem ipsum" in a kept line, any case (published: True)."""
    filter_javascript: bool = True
    """Drop lines mentioning "javascript", any case (published: True)."""
    filter_curly_bracket: bool = True
    """Reject pages with ``{`` in a kept line (published: True)."""
    filter_policy: bool = True
    """Drop lines containing a phrase of :data:`POLICY_SUBSTRINGS`, any case (published: True)."""

    def __post_init__(self) -> None:
        for name in ("min_num_sentences", "min_words_per_line", "max_word_length"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None (rule off), got {value}")


@register
class C4Quality(Filter):
    """C4's cleaning: keeps the lines that look like prose and rejects pages left too short.

    Each line, stripped of surrounding whitespace, goes through these checks in order (as
    ``clean_page`` does); a line that fails a "drop" check is removed, and a line that reaches a
    "reject" check rejects the whole page:

    1. drop: a word longer than ``max_word_length``
    2. citations removed (``remove_citations``)
    3. drop: no terminal punctuation, or an ellipsis at the end
    4. drop: fewer than ``min_words_per_line`` words (counted before citations were removed)
    5. reject ``c4_lorem_ipsum``: contains "lorem ipsum"
    6. drop: contains "javascript"
    7. reject ``c4_curly_bracket``: contains ``{``
    8. drop: contains a policy phrase

    Then the page is rejected as ``c4_too_few_sentences`` when its kept lines hold fewer than
    ``min_num_sentences`` sentences, or as ``c4_empty_after_cleaning`` when no line is left.
    Null or blank text is rejected as ``c4_empty_doc``. Kept rows get ``text`` = the kept lines
    joined with ``\\n``; rejected rows keep their original text, so the rejects show the page as
    it came in.

    Signal columns (int32): ``c4_kept_lines``, ``c4_removed_lines``, ``c4_sentences``.

    Differences from datatrove: sentences are a count of end marks (``.``, ``!``, ``?`` followed
    by whitespace or the end of the line; every kept line has at least one), which is how TFDS's
    C4 code describes its rule, instead of NLTK's punkt, which also knows abbreviations ("Mr.
    Smith" is two here and one there); lines split on ``\\n`` only. The mode that splits pages
    into sentences instead of lines (``split_paragraph=False``) is not offered.
    """

    name: ClassVar[str] = "c4"
    Config: ClassVar[type] = C4QualityConfig

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        cfg = self.config
        text, has_text = ts.document_text(batch, self.name)
        lines = ts.lines(text)
        raw = lines.values.str.strip_chars()
        line = raw.str.replace_all(CITATION, "") if cfg.remove_citations else raw
        kept = np.ones(len(raw), dtype=bool)
        if cfg.max_word_length is not None:
            kept &= ~_has_long_word(raw, cfg.max_word_length)
        if cfg.filter_no_terminal_punct:
            last = line.str.slice(-1, 1).is_in(list(END_PUNCTUATION)).to_numpy()
            kept &= last & ~line.str.ends_with("...").to_numpy()
        if cfg.min_words_per_line is not None:
            kept &= ts.word_count(raw) >= cfg.min_words_per_line
        lorem = np.zeros_like(kept)
        if cfg.filter_lorem_ipsum:
            lorem = kept & line.str.contains("(?i)lorem ipsum").to_numpy()
            kept &= ~lorem
        if cfg.filter_javascript:
            kept &= ~line.str.contains("(?i)javascript").to_numpy()
        curly = np.zeros_like(kept)
        if cfg.filter_curly_bracket:
            curly = kept & line.str.contains("{", literal=True).to_numpy()
            kept &= ~curly
        if cfg.filter_policy:
            kept &= ~line.str.contains("(?i)" + "|".join(POLICY_SUBSTRINGS)).to_numpy()

        # The page-level verdict comes from the first line that reaches a "reject" check.
        first_lorem = _first_line_per_row(lorem, lines)
        first_curly = _first_line_per_row(curly, lines)
        kept_lines = ts.Pieces(line, lines.row, lines.n_rows).select(kept)
        sentences = np.maximum(kept_lines.values.str.count_matches(_SENTENCE_END).to_numpy(), 1)
        n_sentences = kept_lines.per_row(sentences)
        n_kept = kept_lines.per_row()
        n_lines = lines.per_row()

        keep, reason = ts.first_failure([
            ("c4_empty_doc", ~has_text),
            ("c4_lorem_ipsum", first_lorem < first_curly),
            ("c4_curly_bracket", first_curly < first_lorem),
            ("c4_too_few_sentences", ts.under_limit(n_sentences, cfg.min_num_sentences)),
            ("c4_empty_after_cleaning", n_kept == 0),
        ], batch.num_rows)
        original = batch.column(batch.schema.get_field_index("text"))
        new_text = pl.select(pl.when(pl.Series(keep)).then(_join_lines(kept_lines))
                             .otherwise(pl.Series(original))).to_series()
        columns = {
            "text": new_text.to_arrow().cast(original.type),
            f"{self.name}_kept_lines": pa.array(n_kept.astype(np.int32)),
            f"{self.name}_removed_lines": pa.array((n_lines - n_kept).astype(np.int32)),
            f"{self.name}_sentences": pa.array(n_sentences.astype(np.int32)),
        }
        return FilterResult(keep=keep, reason=reason, columns=columns)


def _has_long_word(lines: pl.Series, max_length: int) -> np.ndarray:
    """Whether each (stripped) line has a word of more than ``max_length`` characters."""
    found = np.zeros(len(lines), dtype=bool)
    long = lines.str.len_chars().to_numpy() > max_length  # only these can hold such a word
    if long.any():
        words = pc.utf8_split_whitespace(lines.filter(pl.Series(long)).to_arrow())
        per_line = pc.list_value_length(words).to_numpy()  # >= 1: the lines are not blank
        word_length = pc.utf8_length(pc.list_flatten(words)).to_numpy()
        starts = np.concatenate([[0], np.cumsum(per_line)[:-1]])
        found[long] = np.maximum.reduceat(word_length, starts) > max_length
    return found


def _first_line_per_row(mask: np.ndarray, lines: ts.Pieces) -> np.ndarray:
    """Per row, the index of the first line where ``mask`` holds (lines are in text order);
    the number of lines where there is none."""
    first = np.full(lines.n_rows, len(mask), dtype=np.int64)
    where = np.flatnonzero(mask)
    rows, index = np.unique(lines.row[where], return_index=True)
    first[rows] = where[index]
    return first


def _join_lines(lines: ts.Pieces) -> pl.Series:
    """Per row, its lines joined with ``\\n`` in text order ("" for rows with none)."""
    joined = (pl.DataFrame({"row": lines.row, "line": lines.values})
              .group_by("row").agg(pl.col("line").str.join("\n")))
    out = pl.DataFrame({"row": np.arange(lines.n_rows, dtype=np.int64)}).join(
        joined, on="row", how="left", maintain_order="left")
    return out["line"].fill_null("")
