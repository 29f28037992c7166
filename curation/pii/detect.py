"""PII detection in one string with Python's ``re``: confirming finders and the reference scrubber.

:func:`find_credit_cards` and :func:`find_ibans` confirm regex candidates with their check digits,
:func:`find_ip_addresses` with ``ipaddress`` and the characters around them; the ``pii`` step runs
them on the few rows whose text holds a candidate. :func:`scrub_reference` applies every type in
the step's order, one string at a time, and also reports where each span was in the original
text: the plain reference the vectorised step is checked against, and what the evaluation scores.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from curation.pii.checksums import IBAN_LENGTHS, iban_valid, payment_card_valid
from curation.pii.patterns import DEFAULT_PLACEHOLDERS, PATTERNS, PII_TYPES

COMPILED: dict[str, re.Pattern[str]] = {k: re.compile(p, re.ASCII) for k, p in PATTERNS.items()}
_CARD_SEPARATOR = re.compile(r"[ -]")


@dataclass(frozen=True)
class PiiSpan:
    """One detected item: its type and its ``[start, end)`` offsets in the original text."""

    kind: str
    start: int
    end: int


def _card_span(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    """The card number a candidate match holds, or None.

    Groups must share one separator; trailing groups that break the checksum are dropped (a card
    number followed by another short number), as long as 4-4-4 remains.
    """
    if m.start() and text[m.start() - 1] == "+":  # +4477... is an international phone number
        return None
    found = m.group()
    separators = set(_CARD_SEPARATOR.findall(found))
    if len(separators) > 1:
        return None
    groups = _CARD_SEPARATOR.split(found)
    sep = separators.pop() if separators else ""
    shortest = 3 if len(groups) > 3 else len(groups)
    for k in range(len(groups), shortest - 1, -1):
        if payment_card_valid("".join(groups[:k])):
            return m.start(), m.start() + len(sep.join(groups[:k]))
    return None


def _iban_span(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    """The IBAN a candidate match holds, or None.

    A grouped candidate may run on into following words of four letters; it is cut at its
    country's length, which must fall between groups.
    """
    found = m.group()
    length = IBAN_LENGTHS.get(found[:2].upper())
    if length is None:
        return None
    kept = 0
    for end, char in enumerate(found):
        kept += char != " "
        if kept == length:
            break
    else:
        return None
    end += 1
    if end < len(found) and found[end] != " ":
        return None
    if not iban_valid(found[:end].replace(" ", "").upper()):
        return None
    return m.start(), m.start() + end


def _ip_span(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    """The IP address a candidate match is, or None when it is not a valid address or is part of
    a longer dotted number (the 93.92.16.85 in 03.93.92.16.85) or colon-separated run."""
    start, end = m.span()
    found = m.group()
    sep, part_of_run = (":", _is_hex) if ":" in found else (".", str.isdigit)
    before, after = text[max(0, start - 2):start], text[end:end + 2]
    if len(before) == 2 and before[1] == sep and part_of_run(before[0]):
        return None
    if len(after) == 2 and after[0] == sep and part_of_run(after[1]):
        return None
    try:
        ipaddress.ip_address(found)
    except ValueError:
        return None
    return start, end


def _is_hex(char: str) -> bool:
    return char in "0123456789abcdefABCDEF"


def _find_checked(text: str, pattern: re.Pattern[str],
                  confirm: Callable[[str, re.Match[str]], tuple[int, int] | None]
                  ) -> list[tuple[int, int]]:
    """Spans of candidates that ``confirm`` accepts; the search resumes after each one."""
    spans = []
    pos = 0
    while (m := pattern.search(text, pos)) is not None:
        span = confirm(text, m)
        if span is None:
            pos = m.end()
        else:
            spans.append(span)
            pos = span[1]
    return spans


def find_credit_cards(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` of every payment card number in ``text`` that passes Luhn."""
    return _find_checked(text, COMPILED["credit_card"], _card_span)


def find_ibans(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` of every IBAN in ``text`` with a valid length and mod-97 checksum."""
    return _find_checked(text, COMPILED["iban"], _iban_span)


def find_ip_addresses(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` of every IPv4 and IPv6 address in ``text``."""
    return _find_checked(text, COMPILED["ip"], _ip_span)


def _find_plain(kind: str) -> Callable[[str], list[tuple[int, int]]]:
    pattern = COMPILED[kind]
    return lambda text: [m.span() for m in pattern.finditer(text)]


FINDERS: dict[str, Callable[[str], list[tuple[int, int]]]] = {
    kind: _find_plain(kind) for kind in PII_TYPES}
FINDERS["credit_card"] = find_credit_cards
FINDERS["iban"] = find_ibans
FINDERS["ip"] = find_ip_addresses


def splice(text: str, spans: list[tuple[int, int]], placeholder: str) -> str:
    """``text`` with each of the sorted, disjoint ``spans`` replaced by ``placeholder``."""
    pieces, prev = [], 0
    for start, end in spans:
        pieces += [text[prev:start], placeholder]
        prev = end
    pieces.append(text[prev:])
    return "".join(pieces)


def scrub_reference(text: str, kinds: Iterable[str] = PII_TYPES,
                    placeholders: Mapping[str, str] = DEFAULT_PLACEHOLDERS
                    ) -> tuple[str, list[PiiSpan]]:
    """Scrubs ``text`` one type at a time, in :data:`PII_TYPES` order, like the ``pii`` step.

    Returns the scrubbed text and the spans found, in original-text offsets (sorted by type
    order, then position). Later types search the text with earlier placeholders in it, exactly
    as the step's kernels do.
    """
    wanted = set(kinds)
    current = text
    origin = list(range(len(text)))  # original offset of each character of current; -1: placeholder
    spans: list[PiiSpan] = []
    for kind in (k for k in PII_TYPES if k in wanted):
        found = FINDERS[kind](current)
        if not found:
            continue
        placeholder = placeholders[kind]
        new_origin: list[int] = []
        prev = 0
        for start, end in found:
            inside = [o for o in origin[start:end] if o >= 0]
            if inside:
                spans.append(PiiSpan(kind, inside[0], inside[-1] + 1))
            new_origin += origin[prev:start] + [-1] * len(placeholder)
            prev = end
        origin = new_origin + origin[prev:]
        current = splice(current, found, placeholder)
    return current, spans
