"""SFT and preference row formats → the normal form; format detection; file reading."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.tokens.formats import (FormatError, Preference, Rejected, detect_format,
                                     parse_rows)
from curation.tokens.records import RecordFile, input_stem

DATA = Path(__file__).parent / "data"
F = Path("data/train.jsonl")


def parse(fmt, row):
    return parse_rows(fmt, [row], F, 0)[0]


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


@pytest.mark.parametrize("kind,columns,expected", [
    ("sft", ["id", "messages"], "messages"),
    ("sft", ["conversations", "source"], "sharegpt"),
    ("sft", ["instruction", "input", "output"], "alpaca"),
    ("sft", ["prompt", "response"], "prompt_response"),
    ("sft", ["prompt", "completion"], "prompt_response"),
    ("preference", ["prompt", "chosen", "rejected"], "prompt_chosen_rejected"),
    ("preference", ["chosen", "rejected"], "hh"),
])
def test_detect_format_from_columns(kind, columns, expected):
    assert detect_format(kind, columns, F) == expected


def test_detect_format_errors_name_the_file_and_columns_found():
    with pytest.raises(FormatError, match=r"data/train.jsonl: cannot tell the sft format .*"
                                          r"found: question, answer.*--format"):
        detect_format("sft", ["question", "answer"], F)
    with pytest.raises(FormatError, match=r"alpaca needs column\(s\) instruction, output "
                                          r"\(found: messages\)"):
        detect_format("sft", ["messages"], F, "alpaca")
    with pytest.raises(ValueError, match="'hh' is not a sft format"):
        detect_format("sft", ["chosen", "rejected"], F, "hh")
    # An explicit format wins over detection when both would fit.
    assert detect_format("sft", ["messages", "prompt", "response"], F,
                         "prompt_response") == "prompt_response"


def test_messages_keep_roles_content_and_train_flag():
    row = {"messages": [{"role": "system", "content": "Be kind."},
                        {"role": "user", "content": "Hi", "name": "x"},
                        {"role": "assistant", "content": "Hello!", "train": False},
                        {"role": "user", "content": "Bye"},
                        {"role": "assistant", "content": "Bye!", "train": None}]}
    assert parse("messages", row) == [
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "train": False},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]


def test_sharegpt_maps_from_value_and_system_column():
    row = {"system": "Be brief.",
           "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"},
                             {"from": "human", "value": "3+3?"}, {"from": "gpt", "value": "6"}]}
    assert parse("sharegpt", row) == msgs(("system", "Be brief."), ("user", "2+2?"),
                                          ("assistant", "4"), ("user", "3+3?"),
                                          ("assistant", "6"))
    role_content = {"conversations": [{"role": "user", "content": "a"},
                                      {"role": "assistant", "content": "b"}]}
    assert parse("sharegpt", role_content) == msgs(("user", "a"), ("assistant", "b"))


def test_alpaca_joins_instruction_and_input():
    row = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}
    assert parse("alpaca", row) == msgs(("user", "Translate to French.\n\nGood morning"),
                                        ("assistant", "Bonjour"))
    for empty in ("", "  ", None):
        row = {"instruction": "Name a color.", "input": empty, "output": "Blue"}
        assert parse("alpaca", row) == msgs(("user", "Name a color."), ("assistant", "Blue"))
    assert parse("alpaca", {"instruction": "Hi", "output": "Yo", "system": "S"})[0] == {
        "role": "system", "content": "S"}


def test_prompt_response_and_prompt_completion():
    assert parse("prompt_response", {"prompt": "Q", "response": "A"}) == msgs(
        ("user", "Q"), ("assistant", "A"))
    assert parse("prompt_response", {"prompt": "Q", "completion": "A"}) == msgs(
        ("user", "Q"), ("assistant", "A"))
    conversational = {"prompt": msgs(("system", "S"), ("user", "Q")),
                      "completion": msgs(("assistant", "A"))}
    assert parse("prompt_response", conversational) == msgs(("system", "S"), ("user", "Q"),
                                                            ("assistant", "A"))


def test_prompt_chosen_rejected_strings_lists_and_repeated_prompt():
    assert parse("prompt_chosen_rejected", {"prompt": "Q", "chosen": "good", "rejected": "bad"}
                 ) == Preference(prompt=msgs(("user", "Q")), chosen="good", rejected="bad")
    trl = {"prompt": msgs(("user", "Q")), "chosen": msgs(("assistant", "good")),
           "rejected": msgs(("assistant", "bad"))}
    assert parse("prompt_chosen_rejected", trl) == Preference(msgs(("user", "Q")), "good", "bad")
    ultrafeedback = {"prompt": "Q", "chosen": msgs(("user", "Q"), ("assistant", "good")),
                     "rejected": msgs(("user", "Q"), ("assistant", "bad"))}
    assert parse("prompt_chosen_rejected", ultrafeedback) == Preference(msgs(("user", "Q")),
                                                                        "good", "bad")
    with pytest.raises(FormatError, match="'chosen' must be one assistant reply.*2 messages "
                                          r"\(assistant, assistant\)"):
        parse("prompt_chosen_rejected", {"prompt": "Q", "rejected": "bad",
                                         "chosen": msgs(("assistant", "a"), ("assistant", "b"))})


def test_real_hh_rlhf_rows_parse_to_prompt_and_final_replies():
    rows = [json.loads(line) for line in (DATA / "hh_rlhf_sample.jsonl").open()]
    pairs = parse_rows("hh", rows, DATA / "hh_rlhf_sample.jsonl", 0)
    assert pairs[0] == Preference(prompt=msgs(("user", "Is it possible to download a car?")),
                                  chosen="I’m not sure what you mean. Can you clarify?",
                                  rejected="I’m sorry, I don’t understand.")
    christmas = pairs[3]  # three human turns: the prompt holds five messages
    assert [m["role"] for m in christmas.prompt] == ["user", "assistant"] * 2 + ["user"]
    assert christmas.prompt[-1]["content"] == "Your cat got you some ribbon?"
    assert christmas.chosen == ("That’s right.  It was under the tree when I woke up in the "
                                "morning.")
    for row, pair in zip(rows, pairs):
        prefix = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
                         for m in pair.prompt)
        assert row["chosen"] == f"{prefix}\n\nAssistant: {pair.chosen}"
        assert row["rejected"] == f"{prefix}\n\nAssistant: {pair.rejected}"


def test_hh_rows_that_cannot_make_a_pair():
    differ = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ciao",
              "rejected": "\n\nHuman: hi\n\nAssistant: hey\n\nHuman: bye\n\nAssistant: no"}
    result = parse("hh", differ)
    assert isinstance(result, Rejected)
    assert result.reason.startswith("prefix_mismatch: chosen and rejected do not share") \
        and "differ at message 1" in result.reason
    empty = {"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "\n\nHuman: hi\n\nAssistant: no"}
    assert parse("hh", empty).reason == "empty_content: message 1 (assistant) is empty"
    with pytest.raises(FormatError, match=r"row 0: column 'chosen' is not an HH-RLHF transcript"):
        parse("hh", {"chosen": "User: hi", "rejected": "\n\nHuman: hi\n\nAssistant: no"})


def test_errors_name_file_row_and_fix():
    good = {"messages": msgs(("user", "a"), ("assistant", "b"))}
    bad_role = {"messages": [{"role": "tool", "content": "{}"}]}
    with pytest.raises(FormatError, match=r"data/train.jsonl: row 12: messages\[0\] has unknown "
                                          r"role 'tool' \(known: system, user, assistant\); map"):
        parse_rows("messages", [good, good, bad_role], F, 10)
    with pytest.raises(FormatError, match=r"row 0: column 'conversations' is missing \(found: "
                                          r"messages\)"):
        parse("sharegpt", good)
    with pytest.raises(FormatError, match="'train' must be true or false, got 'yes'"):
        parse("messages", {"messages": [{"role": "user", "content": "a", "train": "yes"}]})
    with pytest.raises(FormatError, match="column 'messages' must be a list of messages, got str"):
        parse("messages", {"messages": "hello"})
    empty = parse("messages", {"messages": msgs(("user", "a"), ("assistant", "  "))})
    assert empty.reason == "empty_content: message 1 (assistant) is empty"


def test_records_read_parquet_jsonl_gz_and_json_array(tmp_path):
    rows = [{"id": str(i), "prompt": f"q{i}", "response": f"a{i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows, indent=2))
    for name in ("a.parquet", "b.jsonl", "c.jsonl.gz", "d.json"):
        source = RecordFile(tmp_path / name)
        assert source.columns() == ["id", "prompt", "response"]
        batches = list(source.batches(2, ["prompt", "response", "id"]))
        assert [len(b) for b in batches] == [2, 2, 1]
        assert [r for b in batches for r in b] == rows
        assert source.num_rows() in (5, None)
        assert input_stem(source.path) == name.split(".")[0]
    assert RecordFile(tmp_path / "a.parquet").num_rows() == 5
    assert RecordFile(tmp_path / "b.jsonl").num_rows() == 5


def test_records_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "q"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 is not valid JSON"):
        list(RecordFile(path).batches(10))
    (tmp_path / "list.jsonl").write_text('["q", "a"]\n')
    with pytest.raises(ValueError, match=r"list.jsonl: line 1 holds a list, not an object"):
        list(RecordFile(tmp_path / "list.jsonl").batches(10))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"x.csv: unsupported file type"):
        RecordFile(tmp_path / "x.csv")
