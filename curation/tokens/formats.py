"""The common SFT and preference row formats, read into one normal form.

SFT rows become a list of messages ``{"role": "system"|"user"|"assistant", "content": str}``
(plus ``"train": bool`` when the row says so); preference rows become a :class:`Preference`:
the prompt as messages and the chosen and rejected assistant replies as strings.

==========================  ==========================================================
format                      columns
==========================  ==========================================================
``messages``                ``messages``: ``[{role, content, train?}]``
``sharegpt``                ``conversations``: ``[{from, value}]`` (human/gpt/system),
                            optional ``system``
``alpaca``                  ``instruction``, ``input`` (optional), ``output``, optional
                            ``system``; user = instruction + "\\n\\n" + input
``prompt_response``         ``prompt`` and ``response`` or ``completion``: strings, or
                            message lists (TRL's conversational prompt-completion)
``prompt_chosen_rejected``  ``prompt``, ``chosen``, ``rejected``: strings or message
                            lists; a chosen list may repeat the prompt (UltraFeedback)
``hh``                      ``chosen``, ``rejected`` only: HH-RLHF transcripts
                            (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) or message lists;
                            the prompt is their shared conversation before the final
                            assistant turn
==========================  ==========================================================

Two kinds of problem. A row the data mapping gets wrong (missing column, unknown role, a value of
the wrong type) raises :class:`FormatError`, naming the file, the row and what to fix: it is most
likely wrong for every row. A row whose content is unusable is :class:`Rejected` with a reason:
it goes to ``rejected/`` and is counted, as real datasets hold a few. HH-RLHF's harmless-base
test split (2,312 rows) has four empty final replies (``empty_content``) and five rows whose
chosen and rejected transcripts differ before the final reply (``prefix_mismatch``: a stray
``"  Human:"`` inside a turn, or an extra turn on one side).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SFT_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_response")
PREFERENCE_FORMATS = ("prompt_chosen_rejected", "hh")
ROLE_NAMES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "system": "system"}
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
# What each format reads (the first group is required); "id" is read when present.
COLUMNS = {
    "messages": (("messages",), ()),
    "sharegpt": (("conversations",), ("system",)),
    "alpaca": (("instruction", "output"), ("input", "system")),
    "prompt_response": (("prompt",), ("response", "completion", "system")),
    "prompt_chosen_rejected": (("prompt", "chosen", "rejected"), ("system",)),
    "hh": (("chosen", "rejected"), ()),
}
DETECT_HELP = {
    "sft": "messages | conversations | instruction+output | prompt+response | prompt+completion",
    "preference": "prompt+chosen+rejected | chosen+rejected",
}


class FormatError(ValueError):
    """A row that does not fit its format; the message names the file, the row and the fix."""


class Rejected(Exception):
    """A row whose content cannot make an example; ``reason`` is written beside it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Preference:
    """A preference pair in normal form."""

    prompt: list[dict]
    chosen: str
    rejected: str


def formats_for(kind: str) -> tuple[str, ...]:
    """The formats of ``kind`` (``"sft"`` or ``"preference"``)."""
    if kind == "sft":
        return SFT_FORMATS
    if kind == "preference":
        return PREFERENCE_FORMATS
    raise ValueError(f"kind={kind!r} is not one of sft, preference")


def detect_format(kind: str, columns: list[str], path: Path, requested: str = "auto") -> str:
    """The format of a file from its column names, or ``requested`` checked against them."""
    known = formats_for(kind)
    have = set(columns)
    if requested != "auto":
        if requested not in known:
            raise ValueError(f"format {requested!r} is not a {kind} format (known: "
                             f"{', '.join(known)}, or auto)")
        missing = [c for c in COLUMNS[requested][0] if c not in have]
        if requested == "prompt_response" and not have & {"response", "completion"}:
            missing.append("response (or completion)")
        if missing:
            raise FormatError(f"{path}: format {requested} needs column(s) "
                              f"{', '.join(missing)} (found: {', '.join(columns) or 'none'})")
        return requested
    if kind == "sft":
        if "messages" in have:
            return "messages"
        if "conversations" in have:
            return "sharegpt"
        if {"instruction", "output"} <= have:
            return "alpaca"
        if "prompt" in have and have & {"response", "completion"}:
            return "prompt_response"
    else:
        if {"prompt", "chosen", "rejected"} <= have:
            return "prompt_chosen_rejected"
        if {"chosen", "rejected"} <= have:
            return "hh"
    raise FormatError(f"{path}: cannot tell the {kind} format from the columns (found: "
                      f"{', '.join(columns) or 'none'}); expected {DETECT_HELP[kind]}, or name "
                      "the format (--format)")


def read_columns(fmt: str) -> list[str]:
    """The columns a format reads, plus ``id``."""
    required, optional = COLUMNS[fmt]
    return [*required, *optional, "id"]


def parse_rows(fmt: str, rows: list[dict], path: Path, first_row: int) -> list:
    """Normal forms of ``rows`` (numbered from ``first_row``): a message list (SFT) or a
    :class:`Preference` per row, or the row's :class:`Rejected`. Raises :class:`FormatError`
    naming the file and row."""
    parse = PARSERS[fmt]
    out: list = []
    for offset, row in enumerate(rows):
        try:
            out.append(parse(row))
        except Rejected as rejected:
            out.append(rejected)
        except FormatError as exc:
            raise FormatError(f"{path}: row {first_row + offset}: {exc}") from None
    return out


def _messages(row: dict) -> list[dict]:
    return _message_list(_column(row, "messages"), "messages", keys=("role", "content"),
                         roles={r: r for r in ROLE_NAMES})


def _sharegpt(row: dict) -> list[dict]:
    turns = _column(row, "conversations")
    keys = ("from", "value")
    if isinstance(turns, list) and turns and isinstance(turns[0], dict) and "from" not in turns[0]:
        keys = ("role", "content")
    messages = _message_list(turns, "conversations", keys=keys, roles=SHAREGPT_ROLES)
    return _with_system(row, messages)


def _alpaca(row: dict) -> list[dict]:
    instruction = _string(row, "instruction")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise FormatError(f"column 'input' must be a string, got {type(extra).__name__}")
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages = [{"role": "user", "content": user},
                {"role": "assistant", "content": _string(row, "output")}]
    return _with_system(row, _checked(messages))


def _prompt_response(row: dict) -> list[dict]:
    name = "response" if "response" in row else "completion"
    prompt, reply = _column(row, "prompt"), _column(row, name)
    messages = _as_messages(prompt, "prompt", "user")
    messages += _as_messages(reply, name, "assistant")
    if isinstance(prompt, str):
        messages = _with_system(row, messages)
    return _checked(messages)


def _prompt_chosen_rejected(row: dict) -> Preference:
    raw = _column(row, "prompt")
    prompt = _as_messages(raw, "prompt", "user")
    if isinstance(raw, str):
        prompt = _with_system(row, prompt)
    _checked(prompt)
    return Preference(prompt=prompt, chosen=_reply(row, "chosen", prompt),
                      rejected=_reply(row, "rejected", prompt))


def _hh(row: dict) -> Preference:
    chosen = _conversation(_column(row, "chosen"), "chosen")
    rejected = _conversation(_column(row, "rejected"), "rejected")
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant":
            raise FormatError(f"the {name} conversation ends with a {conv[-1]['role']} message;"
                              " it must end with the assistant reply being compared")
    prompt = chosen[:-1]
    if _key(prompt) != _key(rejected[:-1]):
        at = next((i for i, (a, b) in enumerate(zip(_key(prompt), _key(rejected[:-1])))
                   if a != b), min(len(prompt), len(rejected) - 1))
        raise Rejected(f"prefix_mismatch: chosen and rejected do not share the conversation "
                       f"before the final assistant reply (they differ at message {at}; chosen "
                       f"has {len(prompt)} earlier messages, rejected {len(rejected) - 1}); a "
                       "row must hold one dialogue with two different final replies")
    if not prompt:
        raise FormatError("the conversation has no message before the final assistant reply; "
                          "a preference pair needs a prompt")
    _checked(chosen)
    _checked(rejected[-1:])
    return Preference(prompt=prompt, chosen=chosen[-1]["content"],
                      rejected=rejected[-1]["content"])


PARSERS = {"messages": _messages, "sharegpt": _sharegpt, "alpaca": _alpaca,
           "prompt_response": _prompt_response,
           "prompt_chosen_rejected": _prompt_chosen_rejected, "hh": _hh}


def _column(row: dict, name: str):
    if name not in row:
        raise FormatError(f"column {name!r} is missing (found: {', '.join(row)})")
    return row[name]


def _string(row: dict, name: str) -> str:
    value = _column(row, name)
    if value is None:
        raise Rejected(f"empty_content: column {name!r} is null")
    if not isinstance(value, str):
        raise FormatError(f"column {name!r} must be a string, got {type(value).__name__}")
    return value


def _message_list(value, column: str, *, keys: tuple[str, str], roles: dict[str, str]
                  ) -> list[dict]:
    if not isinstance(value, list):
        raise FormatError(f"column {column!r} must be a list of messages, got "
                          f"{type(value).__name__}")
    role_key, content_key = keys
    messages = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or role_key not in item:
            raise FormatError(f"{column}[{i}] must be an object with {role_key!r} and "
                              f"{content_key!r}, got {_short(item)}")
        role = roles.get(item[role_key])
        if role is None:
            raise FormatError(f"{column}[{i}] has unknown role {item[role_key]!r} (known: "
                              f"{', '.join(roles)}); map it to one of them or drop the message")
        message = {"role": role, "content": item.get(content_key)}
        train = item.get("train")
        if train is not None:
            if not isinstance(train, bool):
                raise FormatError(f"{column}[{i}]: 'train' must be true or false, got "
                                  f"{train!r}")
            message["train"] = train
        messages.append(message)
    if not messages:
        raise Rejected(f"empty_content: column {column!r} holds no message")
    return _checked(messages)


def _checked(messages: list[dict]) -> list[dict]:
    """Every message's content is a non-blank string (else Rejected / FormatError)."""
    for i, m in enumerate(messages):
        content = m["content"]
        if content is not None and not isinstance(content, str):
            raise FormatError(f"message {i} ({m['role']}): content must be a string, got "
                              f"{type(content).__name__}")
        if content is None or not content.strip():
            raise Rejected(f"empty_content: message {i} ({m['role']}) is empty")
    return messages


def _as_messages(value, column: str, role: str) -> list[dict]:
    if isinstance(value, str) or value is None:
        return [{"role": role, "content": value}]
    return _message_list(value, column, keys=("role", "content"),
                         roles={r: r for r in ROLE_NAMES})


def _with_system(row: dict, messages: list[dict]) -> list[dict]:
    system = row.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return messages
    if not isinstance(system, str):
        raise FormatError(f"column 'system' must be a string, got {type(system).__name__}")
    if messages and messages[0]["role"] == "system":
        raise FormatError("both the 'system' column and the first message set a system "
                          "prompt; keep one")
    return [{"role": "system", "content": system}, *messages]


def _reply(row: dict, name: str, prompt: list[dict]) -> str:
    value = _column(row, name)
    if isinstance(value, str) or value is None:
        return _checked([{"role": "assistant", "content": value}])[0]["content"]
    messages = _message_list(value, name, keys=("role", "content"),
                             roles={r: r for r in ROLE_NAMES})
    if len(messages) > 1 and _key(messages[:len(prompt)]) == _key(prompt):
        messages = messages[len(prompt):]
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages)
        raise FormatError(f"column {name!r} must be one assistant reply (or the prompt's "
                          f"messages followed by one), got {len(messages)} messages ({roles})")
    return messages[0]["content"]


def _conversation(value, name: str) -> list[dict]:
    if isinstance(value, list):
        return _message_list(value, name, keys=("role", "content"),
                             roles={r: r for r in ROLE_NAMES})
    if not isinstance(value, str):
        raise FormatError(f"column {name!r} must be an HH-RLHF transcript or a message list, "
                          f"got {type(value).__name__}")
    parts = HH_TURN.split(value)
    if parts[0].strip() or len(parts) < 3:
        raise FormatError(f"column {name!r} is not an HH-RLHF transcript: it must start with "
                          f"'\\n\\nHuman: ' (starts {value[:40]!r})")
    return [{"role": HH_ROLES[role], "content": text}
            for role, text in zip(parts[1::2], parts[2::2])]


def _key(messages: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], (m["content"] or "").strip()) for m in messages]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
