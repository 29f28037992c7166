"""Vectorised text statistics shared by the heuristic quality filters (Gopher, C4, FineWeb).

Everything here works on a whole column of documents at once: a document's pieces (words, lines,
paragraphs) are flattened into one column with the index of their document beside it
(:class:`Pieces`), one Polars kernel computes a feature for every piece, and ``np.bincount`` sums
it back per document. No Python code runs per document or per piece.

The units, for every filter:

* **word**: a maximal run of non-whitespace characters, as ``str.split()`` makes them, punctuation
  attached ("end." is one word). datatrove splits words with an NLTK or spaCy tokenizer that also
  separates punctuation and clitics ("don't" -> "do", "n't"), one Python call per document and
  much slower; the rules that care about bare words (word length, stop words) strip a word's
  leading and trailing Unicode punctuation and symbols (categories P and S) instead.
* **line**: the text between two ``\\n`` (a ``\\r`` before the ``\\n`` stays in the line).
* **paragraph**: a maximal run of non-empty lines, i.e. the pieces of ``text.strip()`` split on
  ``\\n{2,}`` (datatrove's definition).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

_HAS_NON_SYMBOL = r"[^\p{P}\p{S}]"
_EDGE_PUNCT = r"^[\p{P}\p{S}]+|[\p{P}\p{S}]+$"

# Odd 64-bit constants (splitmix64): multiplying by one is a bijection on uint64, so mixing
# loses no information; numpy's uint64 arithmetic wraps, which is what a hash wants.
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_ROW_SALT = np.uint64(0x9E3779B97F4A7C15)


def document_text(batch: pa.RecordBatch, step: str) -> tuple[pl.Series, np.ndarray]:
    """The ``text`` column (nulls as ``""``) and, per row, whether it has a non-space character."""
    if "text" not in batch.schema.names:
        raise ValueError(f"step {step!r}: the batch has no 'text' column (found: "
                         f"{', '.join(batch.schema.names)}); map the text column in the reader")
    column = batch.column(batch.schema.get_field_index("text"))
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_string_view(column.type)):
        raise ValueError(f"step {step!r}: column 'text' must be utf8 strings, got {column.type}")
    text = pl.Series("text", column).fill_null("")
    has_text = text.str.contains(r"\S").to_numpy()
    return text, has_text


@dataclass(frozen=True)
class Pieces:
    """The pieces of every document in one flat column; ``values[i]`` belongs to row ``row[i]``."""

    values: pl.Series
    """(P,) utf8, document by document, in text order."""
    row: np.ndarray
    """(P,) int64, non-decreasing: the batch row each piece comes from."""
    n_rows: int

    @classmethod
    def from_lists(cls, lists: pl.Series) -> Pieces:
        """Flattens a list-of-strings column (one list per document; null = no pieces)."""
        lengths = lists.list.len().fill_null(0).to_numpy()
        values = lists.explode(empty_as_null=False, keep_nulls=False)
        return cls(values, np.repeat(np.arange(len(lists), dtype=np.int64), lengths), len(lists))

    def select(self, mask: np.ndarray) -> Pieces:
        """Only the pieces where ``mask`` (P,) is true."""
        return Pieces(self.values.filter(pl.Series(mask)), self.row[mask], self.n_rows)

    def per_row(self, x: np.ndarray | pl.Series | None = None) -> np.ndarray:
        """Sums ``x`` (P,) per document; without ``x``, counts pieces. (n_rows,) float64."""
        weights = None if x is None else np.asarray(x, dtype=np.float64)
        return np.bincount(self.row, weights=weights, minlength=self.n_rows).astype(np.float64)

    def chars(self) -> np.ndarray:
        """Characters (code points) of every piece, (P,) int64."""
        return self.values.str.len_chars().to_numpy().astype(np.int64)


def words(text: pl.Series) -> Pieces:
    """Whitespace-separated words of every document, as Python's ``str.split()`` makes them."""
    # Arrow's splitter is twice as fast as a regex; it leaves one "" for a blank document.
    lists = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(text.to_arrow()))
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    pieces = Pieces(pl.from_arrow(pc.list_flatten(lists)),
                    np.repeat(np.arange(len(text), dtype=np.int64), lengths), len(text))
    return pieces.select(pieces.values.str.len_bytes().to_numpy() > 0)


def word_count(text: pl.Series) -> np.ndarray:
    """Whitespace-separated words per document (``len(text.split())``), (n_rows,) float64."""
    lists = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(text.to_arrow()))
    counts = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.float64)
    return np.where(text.str.contains(r"\S").to_numpy(), counts, 0.0)  # blank splits to [""]


def lines(text: pl.Series) -> Pieces:
    """Every line of every document, empty ones included (``"a\\n\\nb"`` has three)."""
    return Pieces.from_lists(text.str.split("\n"))


def paragraphs(text: pl.Series) -> Pieces:
    """Paragraphs: ``text.strip()`` split on runs of two or more newlines."""
    # Runs of 3+ newlines become 2, so a literal split on "\n\n" is a split on \n{2,}.
    stripped = text.str.strip_chars().str.replace_all(r"\n{3,}", "\n\n")
    return Pieces.from_lists(stripped.str.split("\n\n"))


def strip_edge_punctuation(values: pl.Series) -> pl.Series:
    """Each string without its leading and trailing punctuation and symbols ("(end)." -> "end")."""
    return values.str.replace_all(_EDGE_PUNCT, "")


def has_non_symbol(values: pl.Series) -> np.ndarray:
    """Whether each string has a character that is not punctuation or a symbol (a real word)."""
    return values.str.contains(_HAS_NON_SYMBOL).to_numpy()


def line_count(text: pl.Series) -> np.ndarray:
    """Lines per document as ``str.splitlines`` on ``\\n`` counts them: a final newline ends the
    last line instead of starting an empty one, and ``""`` has none."""
    newlines = text.str.count_matches("\n", literal=True).to_numpy().astype(np.int64)
    closes_last = text.str.ends_with("\n").to_numpy().astype(np.int64)
    return np.where(text.str.len_bytes().to_numpy() > 0, newlines + 1 - closes_last, 0)


def duplicate_counts(pieces: Pieces) -> tuple[np.ndarray, np.ndarray]:
    """Repeats of identical pieces within each document: how many and how many characters.

    A piece that occurs k times in a document contributes k - 1 repeats (every occurrence after
    the first), as in Gopher and datatrove's ``find_duplicates``. (n_rows,) float64 each.
    """
    keys = _salt_with_row(pieces.values.hash(seed=0).to_numpy(), pieces.row)
    repeat = ~pl.Series(keys).is_first_distinct().to_numpy()
    return pieces.per_row(repeat), pieces.per_row(repeat * pieces.chars())


class WordNgrams:
    """Which word n-grams occur more than once in their document, for n = 1, 2, ... (ask in
    increasing n).

    The n-gram starting at word i is keyed by a 64-bit hash, ``mix(key of the (n-1)-gram at i) ^
    hash(word i+n-1)``, salted with its row so that counting keys counts within documents; two
    different n-grams share a key with probability ~2^-64 per pair. An n-gram can only repeat if
    the (n-1)-grams at its first and second word both repeat, so each step hashes and counts
    only those candidate starts: on web text they are a few percent of the words by n = 4.
    """

    def __init__(self, words: Pieces) -> None:
        self.row = words.row
        self.n_rows = words.n_rows
        self.word_hash = words.values.hash(seed=0).to_numpy()
        self.word_chars = words.chars()
        self._cum_chars = np.concatenate([[0], np.cumsum(self.word_chars)])
        self._row_words = np.bincount(self.row, minlength=self.n_rows)
        self._row_first = np.searchsorted(self.row, np.arange(self.n_rows))
        self.n = 1
        self._starts = np.arange(len(self.row))  # candidate starts of n-grams that may repeat
        self._keys = _salt_with_row(self.word_hash, self.row)  # their keys
        self._repeated = _is_duplicated(self._keys)  # whether each candidate occurs twice or more

    def _advance(self, n: int) -> None:
        if n < self.n:
            raise ValueError(f"WordNgrams: asked for {n}-grams after {self.n}-grams; ask in "
                             "increasing n")
        n_words = len(self.row)
        while self.n < n:
            starts = self._starts[self._repeated]
            keys = self._keys[self._repeated]
            repeats = np.zeros(n_words + 1, dtype=bool)
            repeats[starts] = True
            fits = starts + self.n < n_words
            starts, keys = starts[fits], keys[fits]
            grows = repeats[starts + 1] & (self.row[starts] == self.row[starts + self.n])
            starts, keys = starts[grows], keys[grows]
            self._keys = ((keys ^ (keys >> np.uint64(31))) * _MIX) ^ self.word_hash[starts + self.n]
            self._starts = starts
            self._repeated = _is_duplicated(self._keys)
            self.n += 1

    def repeated_starts(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The words that start an n-gram occurring twice or more in their document, and the
        n-grams' keys (equal keys: equal n-grams in the same document)."""
        self._advance(n)
        return self._starts[self._repeated], self._keys[self._repeated]

    def top_ngram_chars(self, n: int) -> np.ndarray:
        """Characters covered by each document's most frequent n-gram, (n_rows,) float64.

        ``count * len(" ".join(ngram))`` for the n-gram ``Counter(ngrams).most_common(1)`` picks,
        as datatrove's ``find_top_duplicate``: among equally frequent n-grams the one seen first,
        so a document without any repeated n-gram gets the length of its first n-gram.
        Documents with fewer than n words get 0.
        """
        starts, keys = self.repeated_starts(n)
        out = np.zeros(self.n_rows)
        has_ngram = self._row_words >= n
        out[has_ngram] = self._ngram_chars(self._row_first[has_ngram], n)
        if len(starts):
            groups = (pl.DataFrame({"key": keys, "start": starts})
                      .group_by("key").agg(pl.col("start").min(), pl.len().alias("count")))
            first = groups["start"].to_numpy()
            count = groups["count"].to_numpy().astype(np.int64)
            row = self.row[first]
            order = np.lexsort((first, -count, row))  # by row, most frequent, seen first
            top = order[np.r_[True, row[order][1:] != row[order][:-1]]]
            out[row[top]] = count[top] * self._ngram_chars(first[top], n)
        return out

    def duplicate_ngram_chars(self, n: int) -> np.ndarray:
        """Characters of the words covered by n-grams that occur more than once, (n_rows,) float64.

        A word counts once however many repeated n-grams overlap it, and the first occurrence of
        a repeated n-gram counts too (Gopher: "the fraction of characters contained within all
        duplicate n-grams, taking care not to count characters that occur in overlapping n-grams
        more than once"). Characters are those of the words, without the spaces between them.
        """
        starts, _ = self.repeated_starts(n)
        covered = np.zeros(len(self.row), dtype=bool)
        for offset in range(n):
            covered[starts + offset] = True
        words = np.flatnonzero(covered)
        return np.bincount(self.row[words], weights=self.word_chars[words],
                           minlength=self.n_rows).astype(np.float64)

    def _ngram_chars(self, starts: np.ndarray, n: int) -> np.ndarray:
        """``len(" ".join(ngram))`` of the n-grams starting at ``starts``."""
        return self._cum_chars[starts + n] - self._cum_chars[starts] + (n - 1)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` elementwise, 0 where the denominator is 0. float64."""
    numerator = np.asarray(numerator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=np.asarray(denominator) > 0)


def over_limit(x: np.ndarray, limit: float | None) -> np.ndarray:
    """Where ``x`` exceeds ``limit``; nowhere when the rule is off (``limit`` None)."""
    return np.zeros(len(x), bool) if limit is None else x > limit


def under_limit(x: np.ndarray, limit: float | None) -> np.ndarray:
    """Where ``x`` is below ``limit``; nowhere when the rule is off (``limit`` None)."""
    return np.zeros(len(x), bool) if limit is None else x < limit


def first_failure(rules: list[tuple[str, np.ndarray]], n_rows: int) -> tuple[np.ndarray, pa.Array]:
    """The keep mask and, per row, the name of the first rule (in list order) that it fails.

    ``rules`` holds ``(reason, failed)`` pairs, ``failed`` a (n_rows,) bool mask. Kept rows get
    an empty reason.
    """
    code = np.zeros(n_rows, dtype=np.int32)
    for index in range(len(rules), 0, -1):
        code[rules[index - 1][1]] = index
    names = pa.array([""] + [reason for reason, _ in rules], pa.string())
    return code == 0, names.take(pa.array(code))


def _is_duplicated(keys: np.ndarray) -> np.ndarray:
    """Whether each key occurs more than once in ``keys`` (a hash table, not a sort)."""
    return pl.Series(keys).is_duplicated().to_numpy()


def _salt_with_row(hashes: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Makes a piece's hash depend on its document, so equal keys mean equal within a document."""
    return hashes ^ (row.astype(np.uint64) * _ROW_SALT)
