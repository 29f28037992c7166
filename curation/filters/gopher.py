"""Gopher's heuristic quality and repetition filters (Rae et al. 2021, MassiveText, App. A1).

Both run column-wise over a batch (see :mod:`curation.filters.text_stats` for the units: words are
whitespace-separated, lines split on ``\\n``). Defaults are datatrove's ``GopherQualityFilter`` and
``GopherRepetitionFilter``, which are the paper's thresholds. A rule set to None is off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa

from curation.filters import text_stats as ts
from curation.registry import register
from curation.step import Filter, FilterResult

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
"""Gopher's required English words: a document needs at least two occurrences of them."""

EMPTY_DOC = "gopher_empty_doc"
_BULLET_LINE = r"(?m)^[^\S\n]*[•-]"  # datatrove: line.lstrip() starts with "•" or "-"
_ELLIPSIS_LINE = r"(?m)(?:\.\.\.|…)[^\S\n]*$"  # line.rstrip() ends with "..." or "…"
_ELLIPSIS = r"\.\.\.|…"


def _check_fraction(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] or None (rule off), got {value}")


@dataclass
class GopherQualityConfig:
    """Options of the ``gopher_quality`` step; None turns a rule off."""

    min_doc_words: int | None = 50
    """Reject documents with fewer words (published: 50). Words that are only punctuation or
    symbols ("-", "|") do not count."""
    max_doc_words: int | None = 100_000
    """Reject documents with more words (published: 100,000)."""
    min_avg_word_length: float | None = 3.0
    """Reject when the mean word length, in characters, is below this (published: 3). Words are
    measured without their leading and trailing punctuation ("end." has 3 characters)."""
    max_avg_word_length: float | None = 10.0
    """Reject when the mean word length is above this (published: 10)."""
    max_symbol_word_ratio: float | None = 0.1
    """Reject when ``#`` per word, or ellipses (``...``, ``…``) per word, exceed this (published:
    0.1). Words here are all whitespace tokens."""
    max_bullet_lines_ratio: float | None = 0.9
    """Reject when more than this fraction of lines start (after spaces) with ``•`` or ``-``
    (published: 0.9)."""
    max_ellipsis_lines_ratio: float | None = 0.3
    """Reject when more than this fraction of lines end (before spaces) with an ellipsis
    (published: 0.3)."""
    min_alpha_words_ratio: float | None = 0.8
    """Reject when fewer than this fraction of words contain a letter (published: 0.8;
    datatrove's ``max_non_alpha_words_ratio``)."""
    min_stop_words: int | None = 2
    """Reject when the words of ``stop_words`` occur fewer times than this (published: 2; every
    occurrence counts, case-sensitively, after stripping edge punctuation)."""
    stop_words: list[str] = field(default_factory=lambda: list(STOP_WORDS))
    """The required words (published: the, be, to, of, and, that, have, with)."""

    def __post_init__(self) -> None:
        for name in ("min_doc_words", "max_doc_words", "min_stop_words"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None (rule off), got {value}")
        for low, high in (("min_doc_words", "max_doc_words"),
                          ("min_avg_word_length", "max_avg_word_length")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} ({lo}) must not exceed {high} ({hi})")
        for name in ("max_bullet_lines_ratio", "max_ellipsis_lines_ratio",
                     "min_alpha_words_ratio"):
            _check_fraction(name, getattr(self, name))
        if self.max_symbol_word_ratio is not None and self.max_symbol_word_ratio < 0:
            raise ValueError(f"max_symbol_word_ratio must be >= 0 or None, "
                             f"got {self.max_symbol_word_ratio}")
        if not self.stop_words and self.min_stop_words:
            raise ValueError("stop_words is empty but min_stop_words is set; give the words or "
                             "set min_stop_words to None")


@register
class GopherQuality(Filter):
    """Gopher's document quality rules; the first rule a document fails is its reason.

    Rules, in order (reason: rejected when):

    0. ``gopher_empty_doc``: the text is null or only whitespace
    1. ``gopher_short_doc`` / ``gopher_long_doc``: word count outside [min, max]
    2. ``gopher_below_avg_threshold`` / ``gopher_above_avg_threshold``: mean word length outside
    3. ``gopher_too_many_hashes`` / ``gopher_too_many_ellipsis``: ``#`` or ellipses per word
    4. ``gopher_too_many_bullets``: fraction of lines starting with a bullet
    5. ``gopher_too_many_end_ellipsis``: fraction of lines ending with an ellipsis
    6. ``gopher_below_alpha_threshold``: fraction of words with a letter
    7. ``gopher_enough_stop_words``: too few stop words (datatrove's name for the rule)

    Signal columns (``gopher_quality_*``): ``word_count``, ``mean_word_length``, ``hash_ratio``,
    ``ellipsis_ratio``, ``bullet_line_frac``, ``ellipsis_line_frac``, ``alpha_word_frac``,
    ``stop_word_count``; 0 for empty documents.

    Differences from datatrove: words are whitespace tokens, measured and matched against the
    stop words without their edge punctuation, where datatrove uses NLTK/spaCy tokens (punctuation
    split off, so its ratios also count punctuation tokens in the denominator); lines split on
    ``\n`` only (``str.splitlines`` also splits on ``\r``, ``\x0b``, ``\x0c``, ``\x85``, ...).
    """

    name: ClassVar[str] = "gopher_quality"
    Config: ClassVar[type] = GopherQualityConfig

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        cfg = self.config
        text, has_text = ts.document_text(batch, self.name)
        tokens = ts.words(text)
        bare = ts.strip_edge_punctuation(tokens.values)
        is_word = ts.has_non_symbol(tokens.values)
        n_tokens = tokens.per_row()
        word_count = tokens.per_row(is_word)
        mean_word_length = ts.ratio(tokens.per_row(is_word * bare.str.len_chars().to_numpy()),
                                    word_count)
        hash_ratio = ts.ratio(text.str.count_matches("#", literal=True).to_numpy(), n_tokens)
        ellipsis_ratio = ts.ratio(text.str.count_matches(_ELLIPSIS).to_numpy(), n_tokens)
        n_lines = ts.line_count(text)
        bullet_frac = ts.ratio(text.str.count_matches(_BULLET_LINE).to_numpy(), n_lines)
        end_ellipsis_frac = ts.ratio(text.str.count_matches(_ELLIPSIS_LINE).to_numpy(), n_lines)
        alpha_frac = ts.ratio(tokens.per_row(tokens.values.str.contains(r"\p{L}").to_numpy()),
                              n_tokens)
        stop_count = tokens.per_row(bare.is_in(list(cfg.stop_words)).to_numpy())

        over, under = ts.over_limit, ts.under_limit
        keep, reason = ts.first_failure([
            (EMPTY_DOC, ~has_text),
            ("gopher_short_doc", under(word_count, cfg.min_doc_words)),
            ("gopher_long_doc", over(word_count, cfg.max_doc_words)),
            ("gopher_below_avg_threshold", under(mean_word_length, cfg.min_avg_word_length)),
            ("gopher_above_avg_threshold", over(mean_word_length, cfg.max_avg_word_length)),
            ("gopher_too_many_hashes", over(hash_ratio, cfg.max_symbol_word_ratio)),
            ("gopher_too_many_ellipsis", over(ellipsis_ratio, cfg.max_symbol_word_ratio)),
            ("gopher_too_many_bullets", over(bullet_frac, cfg.max_bullet_lines_ratio)),
            ("gopher_too_many_end_ellipsis", over(end_ellipsis_frac, cfg.max_ellipsis_lines_ratio)),
            ("gopher_below_alpha_threshold", under(alpha_frac, cfg.min_alpha_words_ratio)),
            ("gopher_enough_stop_words", under(stop_count, cfg.min_stop_words)),
        ], batch.num_rows)
        p = self.name
        columns = {
            f"{p}_word_count": pa.array(word_count.astype(np.int32)),
            f"{p}_mean_word_length": pa.array(mean_word_length.astype(np.float32)),
            f"{p}_hash_ratio": pa.array(hash_ratio.astype(np.float32)),
            f"{p}_ellipsis_ratio": pa.array(ellipsis_ratio.astype(np.float32)),
            f"{p}_bullet_line_frac": pa.array(bullet_frac.astype(np.float32)),
            f"{p}_ellipsis_line_frac": pa.array(end_ellipsis_frac.astype(np.float32)),
            f"{p}_alpha_word_frac": pa.array(alpha_frac.astype(np.float32)),
            f"{p}_stop_word_count": pa.array(stop_count.astype(np.int32)),
        }
        return FilterResult(keep=keep, reason=reason, columns=columns)


@dataclass
class GopherRepetitionConfig:
    """Options of the ``gopher_repetition`` step; None (or an empty mapping) turns a rule off."""

    dup_para_frac: float | None = 0.3
    """Reject when more than this fraction of paragraphs are repeats (published: 0.30)."""
    dup_para_char_frac: float | None = 0.2
    """Reject when repeated paragraphs hold more than this fraction of the characters
    (published: 0.20)."""
    dup_line_frac: float | None = 0.3
    """Reject when more than this fraction of lines are repeats (published: 0.30)."""
    dup_line_char_frac: float | None = 0.2
    """Reject when repeated lines hold more than this fraction of the characters (published:
    0.20)."""
    top_n_grams: dict[int, float] = field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    """n -> limit on the fraction of characters in the most frequent word n-gram (published:
    2: 0.20, 3: 0.18, 4: 0.16)."""
    dup_n_grams: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    """n -> limit on the fraction of characters in repeated word n-grams (published: 5: 0.15,
    6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10)."""

    def __post_init__(self) -> None:
        for name in ("dup_para_frac", "dup_para_char_frac", "dup_line_frac",
                     "dup_line_char_frac"):
            _check_fraction(name, getattr(self, name))
        for name in ("top_n_grams", "dup_n_grams"):
            for n, limit in getattr(self, name).items():
                if not isinstance(n, int) or n < 1:
                    raise ValueError(f"{name}: n-gram sizes must be integers >= 1, got {n!r}")
                _check_fraction(f"{name}[{n}]", limit)
        self.top_n_grams = dict(sorted(self.top_n_grams.items()))
        self.dup_n_grams = dict(sorted(self.dup_n_grams.items()))


@register
class GopherRepetition(Filter):
    """Gopher's repetition rules; the first rule a document fails is its reason.

    Rules, in datatrove's order (reason: rejected when the statistic exceeds its limit):

    0. ``gopher_empty_doc``: the text is null or only whitespace
    1. ``gopher_dup_para_frac``: repeated paragraphs / paragraphs
    2. ``gopher_dup_para_char_frac``: characters in repeated paragraphs / characters of the text
    3. ``gopher_dup_line_frac``: repeated lines / lines
    4. ``gopher_dup_line_char_frac``: characters in repeated lines / characters of the text
    5. ``gopher_top_{n}_gram`` for n = 2, 3, 4: characters in the most frequent n-gram (count x
       its length with single spaces) / characters of the text
    6. ``gopher_duplicated_{n}_n_grams`` for n = 5..10: characters of the words covered by any
       n-gram that occurs more than once, each word counted once / characters of the text

    Definitions: paragraphs are ``text.strip()`` split on ``\\n{2,}``; lines are the non-empty
    pieces of ``text`` split on ``\\n+``; a "repeat" is every occurrence of an identical piece
    after its first in the document (datatrove's ``find_duplicates``); the characters of the
    text are ``len(text)`` with whitespace. n-grams are over whitespace words.

    Signal columns (``gopher_repetition_*``, float32): ``dup_para_frac``,
    ``dup_para_char_frac``, ``dup_line_frac``, ``dup_line_char_frac``, ``top_{n}gram_char_frac``
    and ``dup_{n}gram_char_frac`` for each configured n; 0 for empty documents.

    The top n-gram is the one ``Counter.most_common`` picks (the first seen among equally
    frequent ones), as in datatrove, so a short document fails ``gopher_top_{n}_gram`` without
    any repetition: a 20-word document's first 4-gram alone is about a fifth of its text. Run
    ``gopher_quality`` (50 words at least) first to have such documents rejected as short.

    Differences from datatrove: duplicated n-grams count every occurrence, the first included,
    with overlaps merged, as the paper defines them; datatrove scans left to right and counts only
    later occurrences, skipping n words after each, so on a document that repeats one passage
    twice its fraction is half ours. Lines are the non-empty pieces (datatrove keeps the empty
    piece that a leading or trailing newline makes).
    """

    name: ClassVar[str] = "gopher_repetition"
    Config: ClassVar[type] = GopherRepetitionConfig

    def decide(self, batch: pa.RecordBatch) -> FilterResult:
        cfg = self.config
        text, has_text = ts.document_text(batch, self.name)
        n_chars = text.str.len_chars().to_numpy().astype(np.float64)

        paras = ts.paragraphs(text)
        para_repeats, para_repeat_chars = ts.duplicate_counts(paras)
        line_pieces = ts.lines(text)
        line_pieces = line_pieces.select(line_pieces.values.str.len_bytes().to_numpy() > 0)
        line_repeats, line_repeat_chars = ts.duplicate_counts(line_pieces)
        stats = {
            "dup_para_frac": (ts.ratio(para_repeats, paras.per_row()), cfg.dup_para_frac),
            "dup_para_char_frac": (ts.ratio(para_repeat_chars, n_chars), cfg.dup_para_char_frac),
            "dup_line_frac": (ts.ratio(line_repeats, line_pieces.per_row()), cfg.dup_line_frac),
            "dup_line_char_frac": (ts.ratio(line_repeat_chars, n_chars), cfg.dup_line_char_frac),
        }
        rules = [(EMPTY_DOC, ~has_text)]
        rules += [(f"gopher_{key}", ts.over_limit(value, limit))
                  for key, (value, limit) in stats.items()]

        # WordNgrams goes up in n; the rules keep datatrove's order (top n-grams first).
        ngrams = ts.WordNgrams(ts.words(text))
        top, dup = {}, {}
        for n in sorted(set(cfg.top_n_grams) | set(cfg.dup_n_grams)):
            if n in cfg.top_n_grams:
                top[n] = ts.ratio(ngrams.top_ngram_chars(n), n_chars)
            if n in cfg.dup_n_grams:
                dup[n] = ts.ratio(ngrams.duplicate_ngram_chars(n), n_chars)
        for n, limit in cfg.top_n_grams.items():
            stats[f"top_{n}gram_char_frac"] = (top[n], limit)
            rules.append((f"gopher_top_{n}_gram", ts.over_limit(top[n], limit)))
        for n, limit in cfg.dup_n_grams.items():
            stats[f"dup_{n}gram_char_frac"] = (dup[n], limit)
            rules.append((f"gopher_duplicated_{n}_n_grams", ts.over_limit(dup[n], limit)))

        keep, reason = ts.first_failure(rules, batch.num_rows)
        columns = {f"{self.name}_{key}": pa.array(value.astype(np.float32))
                   for key, (value, _) in stats.items()}
        return FilterResult(keep=keep, reason=reason, columns=columns)

