"""Check digits that RE2 cannot compute: Luhn for payment cards, ISO 7064 mod 97-10 for IBANs.

Each check comes with the length table it is applied with (ISO/IEC 7812 issuer lengths, the SWIFT
IBAN registry), because a bare checksum passes one random number in 10 (Luhn) or in 97 (IBAN).
"""

from __future__ import annotations

# Lengths of card numbers by their first digit, the ISO/IEC 7812 major industry identifier:
# 1 UATP and JCB 1800 (15); 2 Mastercard 2-series (16) and JCB 2131 (15); 3 Diners (14, 16),
# Amex (15), JCB (16-19); 4 Visa (13, 16, 19); 5 Mastercard (16) and Maestro (12-19); 6 Discover,
# UnionPay (16-19) and Maestro (12-19). 0, 7, 8 and 9 are not payment-card industries. A 13-digit
# number that starts with 1 is a millisecond timestamp, not a card.
CARD_LENGTHS: dict[str, frozenset[int]] = {
    "1": frozenset({15}),
    "2": frozenset({15, 16}),
    "3": frozenset({14, 15, 16, 17, 18, 19}),
    "4": frozenset({13, 16, 19}),
    "5": frozenset(range(12, 20)),
    "6": frozenset(range(12, 20)),
}

# IBAN length per country code (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def luhn_valid(digits: str) -> bool:
    """Whether the decimal string ``digits`` ends in a correct Luhn (mod 10) check digit."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def payment_card_valid(digits: str) -> bool:
    """Whether ``digits`` has an issuer's length for its first digit and a valid Luhn digit."""
    return len(digits) in CARD_LENGTHS.get(digits[:1], ()) and luhn_valid(digits)


def iban_valid(iban: str) -> bool:
    """Whether ``iban`` (no spaces, upper case) has its country's length and checksum 1 mod 97.

    ISO 13616: move the country code and check digits to the end, read letters as 10..35, and the
    whole number is 1 modulo 97; check digits 00, 01 and 99 are never issued.
    """
    if len(iban) != IBAN_LENGTHS.get(iban[:2], -1) or not iban[2:4].isdigit():
        return False
    if not 2 <= int(iban[2:4]) <= 98:
        return False
    remainder = 0
    for char in iban[4:] + iban[:4]:
        if "0" <= char <= "9":
            remainder = (remainder * 10 + ord(char) - 48) % 97
        elif "A" <= char <= "Z":
            remainder = (remainder * 100 + ord(char) - 55) % 97
        else:
            return False
    return remainder == 1
