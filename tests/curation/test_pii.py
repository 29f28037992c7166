"""Tests for the pii step: every type in real-looking sentences, checksums, options, nulls, order,
and the vectorised step against the per-string reference."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curation.pii import PII_TYPES, PiiConfig, PiiScrubber, scrub_reference
from curation.pii.checksums import iban_valid, luhn_valid, payment_card_valid
from curation.pii.detect import COMPILED
from curation.pii.patterns import PATTERNS
from curation.registry import STEPS, build_step

PEM = ("-----BEGIN RSA PRIVATE KEY-----\n"
       "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
       "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
       "-----END RSA PRIVATE KEY-----")

# (type, sentence, expected text): the detected item sits in ordinary prose.
DETECTED = [
    ("email", "Write to jane.doe+news@example.co.uk before Friday.",
     "Write to <EMAIL> before Friday."),
    ("email", "Contact: (ops-team@mail.acme-corp.com)", "Contact: (<EMAIL>)"),
    ("phone", "Call me on +1-984-182-0190 tonight.", "Call me on <PHONE> tonight."),
    ("phone", "Our London office: +44 20 7946 0958.", "Our London office: <PHONE>."),
    ("phone", "Desk: +41 (0)96 471 07 95, ask for Jo", "Desk: <PHONE>, ask for Jo"),
    ("phone", "Ring (555) 123-4567 or 555-123-4567 ext. 12", "Ring <PHONE> or <PHONE>"),
    ("phone", "Mobile 07700 900 123, fixe 01.84.17.61.18", "Mobile <PHONE>, fixe <PHONE>"),
    ("phone", "Toll-free 1-800-555-0199 daily", "Toll-free <PHONE> daily"),
    ("ip", "Login from 192.168.0.17 failed.", "Login from <IP_ADDRESS> failed."),
    ("ip", "Host 2001:db8::8a2e:370:7334 is up", "Host <IP_ADDRESS> is up"),
    ("ip", "Mapped ::ffff:192.0.2.128 and fe80::1ff:fe23:4567:890a.",
     "Mapped <IP_ADDRESS> and <IP_ADDRESS>."),
    ("ip", "Connect to 10.0.0.1:8080, not 10.0.0.2.",
     "Connect to <IP_ADDRESS>:8080, not <IP_ADDRESS>."),
    ("ip", "full 6e40:4041:c617:e898:c11:40d2:c669:2eb4", "full <IP_ADDRESS>"),
    ("credit_card", "Charge card 4111 1111 1111 1111 please", "Charge card <CREDIT_CARD> please"),
    ("credit_card", "Visa 4111-1111-1111-1111, Amex 378282246310005.",
     "Visa <CREDIT_CARD>, Amex <CREDIT_CARD>."),
    ("credit_card", "Amex as printed: 3782 822463 10005", "Amex as printed: <CREDIT_CARD>"),
    ("credit_card", "Mastercard 5555555555554444 expires 04/27",
     "Mastercard <CREDIT_CARD> expires 04/27"),
    ("iban", "Pay to GB82 WEST 1234 5698 7654 32 by Monday.", "Pay to <IBAN> by Monday."),
    ("iban", "IBAN: DE89370400440532013000.", "IBAN: <IBAN>."),
    ("iban", "lower case nl91abna0417164300 works", "lower case <IBAN> works"),
    ("us_ssn", "My SSN is 123-45-6789, keep it safe.", "My SSN is <US_SSN>, keep it safe."),
    ("secret", f"Here is my key:\n{PEM}\nthanks", "Here is my key:\n<SECRET>\nthanks"),
    ("secret", "aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "aws_access_key_id = <SECRET>"),
    ("secret", "token ghp_" + "a1B2" * 9 + " leaked", "token <SECRET> leaked"),
    ("secret", "GITLAB=glpat-xxxxxxxxxxxxxxxxxxxx1234;", "GITLAB=<SECRET>;"),
    ("secret", "slack: xoxb-123456789012-abcdefABCDEF", "slack: <SECRET>"),
    ("secret", "key=AIzaSyD-1234567890abcdefghijklmnopqrstu", "key=<SECRET>"),
    ("secret", "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe <SECRET>"),
    ("secret", "OPENAI_API_KEY=sk-proj-Ab12_cd34-EF56gh78IJ90kl12", "OPENAI_API_KEY=<SECRET>"),
    ("secret", "old key sk-" + "Zz9" * 16 + ".", "old key <SECRET>."),
]

# Text that looks like PII but is not: checksums fail, ranges are never issued, or the shape is
# a date, year range, price, decimal, version or id.
NOT_PII = [
    "Card 4111 1111 1111 1112 was declined.",             # Luhn fails
    "Card 4111111111111112 was declined.",                 # Luhn fails
    "Order id 12345678901234567890 shipped.",              # 20 digits: no card, no phone
    "Logged at 1700000000004 ms.",                         # Luhn-valid, but a ms timestamp
    "Pay to GB82 WEST 1234 5698 7654 33 by Monday.",       # mod 97 fails
    "IBAN: DE89370400440532013001.",                       # mod 97 fails
    "Meet on 2023-01-15 or 15.01.2023 at 12:30.",
    "When: 2000-04-16 11:34:35",
    "He lived 1999-2005 and won 2019 2020.",
    "It costs $1,299.99 or 1.299,99 EUR.",
    "At 37.77493, -122.41942 the fog rolls in.",
    "Server 256.1.1.1 and OID 1.2.3.4.5 are not addresses.",
    "Use x[::2] and std::vector here.",
    "sk-learn-compatible-estimators are hyphenated words.",
]


def scrub(texts, ids=None, **options) -> pa.RecordBatch:
    """Runs the step over one batch of ``texts``."""
    ids = ids or [str(i) for i in range(len(texts))]
    batch = pa.record_batch({"id": pa.array(ids, pa.string()),
                             "text": pa.array(texts, pa.string())})
    return PiiScrubber(PiiConfig(**options)).process(batch)


@pytest.mark.parametrize("kind,text,expected", DETECTED, ids=[f"{k}-{i}" for i, (k, _, _) in
                                                              enumerate(DETECTED)])
def test_each_type_is_replaced_and_counted(kind, text, expected):
    out = scrub([text])
    assert out.column("text").to_pylist() == [expected]
    n = expected.count(f"<{'IP_ADDRESS' if kind == 'ip' else kind.upper()}>")
    assert out.column(f"pii_{kind}").to_pylist() == [n]
    assert out.column("pii_total").to_pylist() == [n]


@pytest.mark.parametrize("text", NOT_PII)
def test_lookalikes_are_left_alone(text):
    out = scrub([text])
    assert out.column("text").to_pylist() == [text]
    assert out.column("pii_total").to_pylist() == [0]


@pytest.mark.parametrize("ssn", ["000-12-3456", "666-12-3456", "912-12-3456", "123-00-4567",
                                 "123-45-0000"])
def test_never_issued_ssn_ranges_are_not_ssns(ssn):
    # phone off: a 3-2-4 digit group is also a phone shape
    out = scrub([f"SSN {ssn} on file"], types={"phone": False})
    assert out.column("text").to_pylist() == [f"SSN {ssn} on file"]
    assert out.column("pii_us_ssn").to_pylist() == [0]


def test_counts_per_row_and_columns():
    out = scrub(["a@x.org, b@y.org and c@z.net; call 555-123-4567",
                 "card 4111111111111111 from 10.0.0.1 and 10.0.0.2",
                 "nothing here"])
    assert out.schema.names == ["id", "text", *(f"pii_{k}" for k in PII_TYPES), "pii_total"]
    assert out.column("pii_email").to_pylist() == [3, 0, 0]
    assert out.column("pii_phone").to_pylist() == [1, 0, 0]
    assert out.column("pii_credit_card").to_pylist() == [0, 1, 0]
    assert out.column("pii_ip").to_pylist() == [0, 2, 0]
    assert out.column("pii_total").to_pylist() == [4, 3, 0]
    assert all(out.schema.field(f"pii_{k}").type == pa.int32() for k in (*PII_TYPES, "total"))


def test_card_number_is_not_also_a_phone():
    out = scrub(["pay with 4111 1111 1111 1111 now"])
    assert out.column("text").to_pylist() == ["pay with <CREDIT_CARD> now"]
    assert out.column("pii_phone").to_pylist() == [0]


def test_disabled_types_are_untouched_and_have_no_column():
    text = "Mail a@x.org or call +44 20 7946 0958"
    out = scrub([text], types={"email": False, "phone": True})
    assert out.column("text").to_pylist() == ["Mail a@x.org or call <PHONE>"]
    assert "pii_email" not in out.schema.names
    assert out.column("pii_total").to_pylist() == [1]
    assert scrub([text], types=dict.fromkeys(PII_TYPES, False)).column("text").to_pylist() == [text]


def test_custom_placeholders_are_literal():
    out = scrub(["a@x.org from 10.0.0.1"], placeholders={"email": "[email]", "ip": r"\1<ip>\\"})
    assert out.column("text").to_pylist() == [r"[email] from \1<ip>\\"]


def test_unknown_type_is_rejected_with_the_valid_list():
    valid = "valid types: secret, email, iban, credit_card, us_ssn, ip, phone"
    with pytest.raises(ValueError, match="unknown PII type.*'emails'.*" + valid):
        PiiConfig(types={"emails": True})
    with pytest.raises(ValueError, match=r"pipeline\[0\] \(pii\): placeholders: .*'ssn'"):
        build_step({"step": "pii", "placeholders": {"ssn": "x"}}, "pipeline[0]")
    with pytest.raises(ValueError, match="types.email: expected bool"):
        PiiConfig(types={"email": "yes"})


def test_built_from_config_mapping():
    assert STEPS["pii"] is PiiScrubber
    step = build_step({"step": "pii", "types": {"phone": False},
                       "placeholders": {"email": "[email]"}}, "pipeline[0]")
    assert step.config.enabled == ("secret", "email", "iban", "credit_card", "us_ssn", "ip")
    assert step.config.placeholder("email") == "[email]"


def test_empty_and_null_text():
    out = scrub(["", None, "x@y.com"])
    assert out.column("text").to_pylist() == ["", None, "<EMAIL>"]
    assert out.column("pii_email").to_pylist() == [0, 0, 1]
    assert out.column("pii_total").to_pylist() == [0, 0, 1]
    assert out.column("pii_total").null_count == 0


def test_mixed_batches_keep_rows_ids_and_type():
    texts = ["plain", "ip 8.8.8.8", None, "iban DE89370400440532013000", "", "ssn 123-45-6789"] * 50
    ids = [f"doc-{i}" for i in range(len(texts))]
    batch = pa.record_batch({"id": pa.array(ids), "text": pa.array(texts, pa.large_string()),
                             "source": pa.array(["web"] * len(texts))})
    step = PiiScrubber()
    out = pa.Table.from_batches(list(step(iter([batch.slice(0, 100), batch.slice(100)]))))
    assert out.column("id").to_pylist() == ids
    assert out.column("source").to_pylist() == ["web"] * len(texts)
    assert out.schema.field("text").type == pa.large_string()
    expected = ["plain", "ip <IP_ADDRESS>", None, "iban <IBAN>", "", "ssn <US_SSN>"] * 50
    assert out.column("text").to_pylist() == expected
    assert out.column("pii_total").to_pylist() == [0, 1, 0, 1, 0, 1] * 50
    assert step.counts.rows_in == step.counts.rows_out == len(texts)


def test_non_string_text_is_rejected_with_the_fix():
    batch = pa.record_batch({"id": ["1"], "text": pa.array(["a@b.com"], pa.string_view())})
    with pytest.raises(ValueError, match="'text' has type string_view.*cast it first"):
        PiiScrubber().process(batch)


def test_vectorised_step_matches_reference():
    # adjacent matches check that Arrow's per-row counts agree with the rewrite (see patterns.py)
    texts = [t for _, t, _ in DETECTED] + NOT_PII + [
        "a@b.co,c@d.co;e@f.co", "1.2.3.4 5.6.7.8,9.9.9.9", "555-1234 555-9876",
        "AKIAIOSFODNN7EXAMPLE AKIAIOSFODNN7EXAMPL2", "4111111111111111 5555555555554444",
        "ips 10.0.0.1:8080 and [2001:db8::1]:443", "Mobil 03.93.92.16.85 / +447700677662",
        "Konto DE89 3704 0044 0532 0130 00 BE68 5390 0754 7034 fertig",
    ]
    out = scrub(texts)
    for i, text in enumerate(texts):
        expected, spans = scrub_reference(text)
        assert out.column("text")[i].as_py() == expected, text
        for kind in PII_TYPES:
            n = sum(span.kind == kind for span in spans)
            assert out.column(f"pii_{kind}")[i].as_py() == n, (kind, text)


def test_arrow_kernels_agree_with_python_re_on_run_together_matches():
    # count_substring_regex restarts at each match end as if the text began there; the patterns
    # are written so that this never changes a count (patterns.py). Glue PII-like pieces together
    # with and without separators and compare both Arrow kernels with Python's re, per pattern.
    pieces = ["a@b.co", "x.y@z-q.org", "555-123-4567", "+1 555 123 4567", "(555)123-4567",
              "123-45-6789", "AKIAIOSFODNN7EXAMPLE", "sk-" + "b" * 30, "1.2.3.4", "2001:db8::1",
              "::ffff:1.2.3.4", "07700 900 123", "4111111111111111", "GB82WEST12345698765432",
              " ", ",", ".", "-", "_", "a", "1", "(", ":", "@", "00"]
    rng = random.Random(0)
    texts = ["".join(rng.choices(pieces, k=rng.randint(1, 10))) for _ in range(400)]
    column = pa.array(texts)
    for kind, pattern in PATTERNS.items():
        counts = pc.count_substring_regex(column, pattern).to_pylist()
        replaced = pc.replace_substring_regex(column, pattern, "<X>").to_pylist()
        compiled = COMPILED[kind]
        assert counts == [len(compiled.findall(t)) for t in texts], kind
        assert replaced == [compiled.sub("<X>", t) for t in texts], kind


def test_reference_reports_original_offsets():
    text = "Mail a@x.org, then call 555-123-4567."
    scrubbed, spans = scrub_reference(text)
    assert scrubbed == "Mail <EMAIL>, then call <PHONE>."
    assert [(s.kind, text[s.start:s.end]) for s in spans] == [("email", "a@x.org"),
                                                               ("phone", "555-123-4567")]


def test_checksums():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert payment_card_valid("4111111111111111")
    assert payment_card_valid("501864667909")  # 12-digit Maestro
    assert not payment_card_valid("1700000000004")  # Luhn-valid; no issuer: 13 digits from 1
    assert not payment_card_valid("0604260700118")
    assert iban_valid("GB82WEST12345698765432") and iban_valid("NO9386011117947")
    assert not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("GB82WEST1234569876543")  # wrong length for GB
    assert not iban_valid("XX82WEST12345698765432")  # no such country
