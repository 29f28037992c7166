"""The normalize step."""

import pyarrow as pa

from curation.steps.normalize import Normalize, NormalizeConfig


def run(texts, **options):
    step = Normalize(NormalizeConfig(**options))
    batch = pa.RecordBatch.from_pydict({"id": [str(i) for i in range(len(texts))], "text": texts})
    return pa.Table.from_batches(list(step(iter([batch])))).column("text").to_pylist()


def test_nfc_controls_line_endings_and_whitespace():
    texts = ["Cafe\u0301 \u200bau\x00 lait", "one\r\ntwo\rthree", "  a \t b\u00a0 c  \n\n\n\nd  ",
             None]
    assert run(texts) == ["Café au lait", "one\ntwo\nthree", "a b c\n\nd", None]


def test_each_rule_can_be_switched_off():
    assert run(["Cafe\u0301"], nfc=False) == ["Cafe\u0301"]
    assert run(["a  b"], whitespace=False) == ["a  b"]
    assert run(["a\r\nb"], line_endings=False, whitespace=False) == ["a\r\nb"]
