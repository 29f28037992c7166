"""The ``pii`` step: replaces personal data and secrets in ``text`` with typed placeholders.

Types, in the order they are applied: secret, email, iban, credit_card, us_ssn, ip, phone (see
patterns.py). Each is one pass of Arrow's RE2 kernels over the whole column: count the matches
per row, then rewrite only the rows that have any and put them back with ``replace_with_mask``.
Card numbers, IBANs and IP addresses need checks RE2 cannot do (check digits, the context of a
match): a regex pass marks the rows holding a candidate, and Python confirms and rewrites just
those rows (few, in real text).

Adds ``pii_<type>`` (int32) per enabled type and ``pii_total``; null text stays null, count 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.io.reader import TEXT
from curation.pii.detect import FINDERS, splice
from curation.pii.patterns import CONFIRMED, DEFAULT_PLACEHOLDERS, PATTERNS, PII_TYPES
from curation.registry import register
from curation.step import Annotator

COUNT_PREFIX = "pii_"
TOTAL_COLUMN = "pii_total"


@dataclass
class PiiConfig:
    """Which PII types to scrub and what to replace each with."""

    types: dict[str, bool] = field(default_factory=dict)
    """On/off per type (secret, email, iban, credit_card, us_ssn, ip, phone); a type left out is
    on. ``{phone: false}`` keeps phone numbers and drops the ``pii_phone`` column."""
    placeholders: dict[str, str] = field(default_factory=dict)
    """Replacement text per type instead of ``<SECRET>``, ``<EMAIL>``, ``<IBAN>``,
    ``<CREDIT_CARD>``, ``<US_SSN>``, ``<IP_ADDRESS>``, ``<PHONE>``. Later types search text that
    holds earlier placeholders, so a placeholder should not look like PII itself."""

    def __post_init__(self) -> None:
        for option, values, value_type in (("types", self.types, bool),
                                           ("placeholders", self.placeholders, str)):
            unknown = sorted(set(values) - set(PII_TYPES))
            if unknown:
                raise ValueError(f"{option}: unknown PII type(s) {', '.join(map(repr, unknown))}; "
                                 f"valid types: {', '.join(PII_TYPES)}")
            for kind, value in values.items():
                if not isinstance(value, value_type):
                    raise ValueError(f"{option}.{kind}: expected {value_type.__name__}, "
                                     f"got {value!r}")

    @property
    def enabled(self) -> tuple[str, ...]:
        """The types to scrub, in the order they are applied."""
        return tuple(kind for kind in PII_TYPES if self.types.get(kind, True))

    def placeholder(self, kind: str) -> str:
        """The replacement text for ``kind``."""
        return self.placeholders.get(kind, DEFAULT_PLACEHOLDERS[kind])


@register
class PiiScrubber(Annotator):
    """Replaces PII in ``text`` and adds per-type counts (see the module docstring)."""

    name: ClassVar[str] = "pii"
    Config: ClassVar[type] = PiiConfig

    def annotate(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        text = batch.column(TEXT)
        if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
            raise ValueError(f"step {self.name!r}: column {TEXT!r} has type {text.type}; Arrow's "
                             "regex kernels need string or large_string (cast it first)")
        total = np.zeros(batch.num_rows, dtype=np.int32)
        counts = {}
        for kind in self.config.enabled:
            scrub = scrub_confirmed if kind in CONFIRMED else scrub_regex
            text, found = scrub(text, kind, self.config.placeholder(kind))
            counts[COUNT_PREFIX + kind] = pa.array(found, pa.int32())
            total += found
        return {TEXT: text, **counts, TOTAL_COLUMN: pa.array(total, pa.int32())}


def scrub_regex(text: pa.Array, kind: str, placeholder: str) -> tuple[pa.Array, np.ndarray]:
    """Replaces every match of ``kind``'s pattern in a string column; returns it and the counts.

    Two RE2 passes: a count over every row, then the rewrite over the rows that have a match.
    """
    pattern = PATTERNS[kind]
    counts = pc.fill_null(pc.count_substring_regex(text, pattern), 0).to_numpy()
    counts = counts.astype(np.int32, copy=False)
    hit = counts > 0
    if not hit.any():
        return text, counts
    mask = pa.array(hit)
    rewrite = placeholder.replace("\\", "\\\\")  # RE2 rewrite strings treat \1 and \\ specially
    rewritten = pc.replace_substring_regex(text.filter(mask), pattern, rewrite)
    return pc.replace_with_mask(text, mask, rewritten), counts


def scrub_confirmed(text: pa.Array, kind: str, placeholder: str) -> tuple[pa.Array, np.ndarray]:
    """Like :func:`scrub_regex` for a type confirmed in Python (``iban``, ``credit_card``, ``ip``).

    RE2 marks the rows holding a candidate; only those rows go through the Python finder.
    """
    counts = np.zeros(len(text), dtype=np.int32)
    candidate = pc.fill_null(pc.match_substring_regex(text, PATTERNS[kind]), False)
    rows = np.flatnonzero(candidate.to_numpy(zero_copy_only=False))
    if not rows.size:
        return text, counts
    find = FINDERS[kind]
    changed, rewritten = [], []
    for row, value in zip(rows, text.take(pa.array(rows)).to_pylist()):
        spans = find(value)
        if spans:
            counts[row] = len(spans)
            changed.append(row)
            rewritten.append(splice(value, spans, placeholder))
    if not changed:
        return text, counts
    mask = np.zeros(len(text), dtype=bool)
    mask[changed] = True
    return pc.replace_with_mask(text, pa.array(mask), pa.array(rewritten, text.type)), counts
