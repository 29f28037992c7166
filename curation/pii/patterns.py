"""The regular expressions of the PII step, one per type, and the order they are applied in.

Every pattern is written in the common subset of RE2 (what Arrow's ``*_regex`` kernels run over a
whole column) and Python's ``re`` with ``re.ASCII`` (what the confirming finders and the reference
scrubber in detect.py run on single strings), so both engines find the same matches: leftmost-first
alternation, ASCII ``\\d``/``\\b``, no look-around, no backreferences, no ``(?i)`` (RE2 folds case
with Unicode rules, ``re.ASCII`` does not, so letters are spelled ``[A-Za-z]``).

One more rule keeps Arrow's ``count_substring_regex`` exact: it restarts the search at the end of
each match as if the text began there, so a ``\\b`` at the start of the next match does not see the
character before it. That changes nothing as long as no match is followed by a word character:
every pattern that can end on a word character ends with ``\\b`` or with a greedy run of a class
that holds every word character. tests/curation/test_pii.py checks both kernels against ``re``.
"""

from __future__ import annotations

# Applied in this order; a later type never sees text an earlier one replaced. Secrets first (a
# PEM block holds anything), email before the number types (digits in addresses), IBAN and card
# before SSN/IP/phone (a card number is not also a phone), phone last (the loosest).
PII_TYPES: tuple[str, ...] = ("secret", "email", "iban", "credit_card", "us_ssn", "ip", "phone")

DEFAULT_PLACEHOLDERS: dict[str, str] = {
    "secret": "<SECRET>",
    "email": "<EMAIL>",
    "iban": "<IBAN>",
    "credit_card": "<CREDIT_CARD>",
    "us_ssn": "<US_SSN>",
    "ip": "<IP_ADDRESS>",
    "phone": "<PHONE>",
}

# Types whose regex matches are only candidates, confirmed in Python (detect.py): card numbers and
# IBANs by their check digits, IP addresses by ``ipaddress`` and by not being part of a longer
# dotted number (the 93.92.16.85 in the phone number 03.93.92.16.85).
CONFIRMED: frozenset[str] = frozenset({"iban", "credit_card", "ip"})

_PEM_LABEL = r"(?:[A-Z0-9]+ )*PRIVATE KEY"
SECRET = "|".join([
    # PEM private key with its footer; without one (a truncated page), the base64 body that follows
    rf"-----BEGIN {_PEM_LABEL}-----[\s\S]*?-----END {_PEM_LABEL}-----",
    rf"-----BEGIN {_PEM_LABEL}-----[A-Za-z0-9_+/= \t\r\n:,-]*",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",                     # AWS access key id
    r"\bgh[pousr]_[0-9A-Za-z]{36,255}\b",                 # GitHub classic tokens
    r"\bgithub_pat_[0-9A-Za-z_]{22,255}\b",               # GitHub fine-grained tokens
    r"\bglpat-[0-9A-Za-z_-]{20,}",                         # GitLab personal access token
    r"\bxox[baprs]-[0-9A-Za-z_-]{10,}",                    # Slack tokens
    r"\bAIza[0-9A-Za-z_-]{35,}",                           # Google API key
    r"\b[rs]k_live_[0-9A-Za-z]{16,}\b",                   # Stripe live secret/restricted keys
    # OpenAI-style keys: project/service/admin keys may hold "-" and "_"; legacy keys are one
    # alphanumeric run (a hyphenated "sk-some-long-slug" is not a key)
    r"\bsk-(?:proj|svcacct|admin|ant-api\d\d|ant-admin\d\d)-[0-9A-Za-z_-]{20,}",
    r"\bsk-[0-9A-Za-z]{20,}\b",
])

EMAIL = (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
         r"(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")

# Country code, two check digits, then an 11-30 character BBAN written in one run or in groups of
# four; mixed case is allowed (lower-cased chat text), the validator upper-cases. Candidates only:
# checksums.iban_valid checks the country's length and the mod-97 checksum.
IBAN = (r"\b[A-Za-z]{2}\d{2}(?:[A-Za-z0-9]{11,30}"
        r"|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,3})?)\b")

# 12-19 digits in one run, in groups of four (4-4-4[-4[-1..4]]) or Amex/Diners style (4-6-4/5),
# separated by spaces or dashes. Candidates only: checksums.payment_card_valid checks the issuer
# length and the Luhn digit; the finder checks that one separator is used throughout.
CREDIT_CARD = (r"\b(?:\d{4}[ -]\d{4}[ -]\d{4}(?:[ -]\d{1,4}){0,2}"
               r"|\d{4}[ -]\d{6}[ -]\d{4,5}"
               r"|\d{12,19})\b")

# AAA-GG-SSSS without the ranges never issued: area 000, 666 and 900-999, group 00, serial 0000.
US_SSN = (r"\b(?:00[1-9]|0[1-9]\d|[1-578]\d\d|6(?:[0-57-9]\d|6[0-57-9]))"
          r"-(?:0[1-9]|[1-9]\d)-(?:000[1-9]|00[1-9]\d|0[1-9]\d\d|[1-9]\d{3})\b")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H = r"[0-9A-Fa-f]{1,4}"
IP = "|".join([
    # IPv6 ending in an embedded IPv4 (::ffff:192.0.2.1, 64:ff9b::192.0.2.1)
    rf"(?:\b(?:{_H}:){{6}}|\b(?:{_H}:){{1,5}}:|::(?:{_H}:){{0,5}}){_IPV4}\b",
    rf"\b(?:{_H}:){{7}}{_H}\b",                 # full form
    rf"\b(?:{_H}:){{1,6}}(?::{_H}){{1,6}}\b",   # compressed in the middle (2001:db8::8a2e:1)
    rf"::(?:{_H}:){{1,6}}{_H}\b",               # leading :: with two groups or more (not x[::2])
    rf"\b(?:{_H}:){{2,7}}:",                    # trailing :: (2001:db8::)
    rf"\b{_IPV4}\b",                            # IPv4, every octet 0-255, no leading zeros
])

# Phone numbers, by the shapes numbering plans print. Dates (YYYY-MM-DD, DD.MM.YYYY: 4-2-2,
# 2-2-4), year ranges (1999-2005), decimals (37.77493), card-style 4-4-4[-4] groups and digit
# runs without separators (ids, timestamps) are deliberately not phone shapes; neither is 4-4
# ("2019 2020"). That gives up some real numbers: bare 10-digit runs and 4-4 local numbers.
# Four or five groups must share one separator, so "2000-04-16 11:34" is a date and a time.
_S = r"[ .-]"


def _same_separator(*sizes: str) -> str:
    """Digit groups of the given ``m,n`` sizes joined by one separator: space, dot or dash."""
    return "|".join(sep.join(rf"\d{{{size}}}" for size in sizes) for sep in (" ", r"\.", "-"))


PHONE = "(?:" + "|".join([
    # international: +CC, an optional "(0)" or area code in parentheses, then 6-14 digits
    r"\+[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d){6,14}",
    # international with the 00 exit code (needs a separator after the country code)
    r"\b00[1-9]\d{0,2}[ .-]\d(?:[ .-]?\d){5,13}",
    # North America with the trunk 1: 1-800-555-1234, 1 (800) 555-1234
    r"\b1[ .-]?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]\d{4}",
    # area code in parentheses: (555) 123-4567, (08) 8747 6301, (37) 788-063
    r"\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}",
    # national, five or four groups: 01.84.17.61.18, 0490 75 40 81, 21 284 698 2548
    rf"\b(?:{_same_separator('2,4', '2,3', '2,3', '2,3', '2,4')})",
    rf"\b(?:{_same_separator('2,4', '2,3', '2,3', '2,4')})",
    # national, three groups: 555-123-4567, 07700 900 123, 079 2718 1155, 416 60 039
    rf"\b(?:\d{{3}}|\d{{5}}){_S}\d{{2,4}}{_S}\d{{2,4}}",
    rf"\b\d{{2}}{_S}(?:\d{{3,4}}{_S}\d{{2,4}}|\d{{2}}{_S}\d{{3}})",
    rf"\b\d{{4}}{_S}(?:\d{{3}}{_S}\d{{2,4}}|\d{{2}}{_S}\d{{3,4}})",
    # national, two groups: 555-1234, 467 3395, 99 668472, 0961-7596216
    r"\b\d{3}[ -]\d{4}",
    r"\b\d{2,4}[ -]\d{5,8}",
]) + r")(?: ?(?:x|ext\.?|#) ?\d{1,6})?\b"

PATTERNS: dict[str, str] = {
    "secret": SECRET,
    "email": EMAIL,
    "iban": IBAN,
    "credit_card": CREDIT_CARD,
    "us_ssn": US_SSN,
    "ip": IP,
    "phone": PHONE,
}
