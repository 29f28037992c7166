"""The chat template: the one place a conversation becomes token ids and a loss mask.

A conversation is rendered as::

    <|bos|>
    <|system|>\\n{content}<|end|>\\n        (any number of messages, roles system/user/assistant)
    <|user|>\\n{content}<|end|>\\n
    <|assistant|>\\n{content}<|end|>\\n
    <|assistant|>\\n                       (the generation prompt, for generation and preference)

Tokenized by pieces, never as one string: the special tokens are inserted as ids and each text
piece (the ``\\n`` after a role token, each message's content, the ``\\n`` after ``<|end|>``) is
encoded on its own with no special token added. So a prompt's tokens are the same whether it is
rendered alone (:func:`render_prompt`) or with its response (:func:`render_chat`), by construction,
and no BOS or role token can double.

Content is stripped of leading and trailing whitespace (Jinja's ``trim``, as Llama 3's template
does). That makes the piecewise ids equal to what ``transformers``' ``apply_chat_template`` gives
with :func:`chat_template_jinja` for the byte-level BPE tokenizers ``crucible tokenizer train``
makes: with a GPT-2 pre-tokenizer, ``"\\n" + content`` splits into ``"\\n"`` and the pre-tokens of
``content`` whenever content does not start with two or more whitespace characters, so encoding
the whole string and encoding the pieces agree. Without the strip they would differ for content
that opens with an indented line or blank lines: the whole string's ``"\\n"`` joins that
whitespace into one pre-token (``"\\n   "``) which BPE merges when the vocabulary has such a
merge (any tokenizer trained on code does), while the pieces keep ``"\\n"`` apart. The price: an
indented first line loses its indentation. Tokenizers with another pre-tokenizer
(SentencePiece's ``▁`` prefix, for one) may still differ from ``transformers``; the ids from this
module are the canonical ones.

The loss mask is 1 on a trained message's content tokens and its ``<|end|>`` token (the model must
learn to stop), 0 on BOS, on the role token and its ``\\n`` (the harness writes headers, the model
never generates them) and on the ``\\n`` after ``<|end|>`` (generation stops at ``<|end|>``, so that
token is never predicted). Which messages are trained is ``train_on``: ``"assistant"`` (every
assistant message), ``"last"`` (the last assistant message only) or ``"all"`` (every message, system
and user included); a message with ``"train": False`` is never trained.

Text that contains a special token's spelling (``"<|end|>"`` typed into a message) would encode
as that special token; rendering refuses it with :class:`SpecialTokenInText` rather than let data
forge a turn boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from curation.tokens.tokenizer import ASSISTANT, BOS, END_OF_TURN, SYSTEM, USER

ROLES = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
TRAIN_ON = ("assistant", "last", "all")
NEWLINE = "\n"

Messages = Sequence[dict]


class ChatError(ValueError):
    """A conversation the template cannot render as a training example."""


class SpecialTokenInText(ChatError):
    """A message's text encodes to a special token (its spelling appears in the text)."""

    def __init__(self, message_index: int, role: str, token: str) -> None:
        self.message_index = message_index
        self.role = role
        self.token = token
        super().__init__(f"message {message_index} ({role}) contains the special token "
                         f"{token!r} as text; remove or escape it in the data")


@dataclass(frozen=True)
class ChatTokens:
    """The ids the template inserts, resolved once per tokenizer."""

    bos: int
    end: int
    roles: dict[str, int]
    newline: tuple[int, ...]
    special: dict[int, str]    # every special token id: none may come out of encoding text
    special_ids: frozenset[int]

    @classmethod
    def of(cls, info) -> ChatTokens:
        """The chat ids of ``info`` (a :class:`~curation.tokens.tokenizer.TokenizerInfo`),
        cached per tokenizer; a clear error when it lacks a chat token."""
        cached = _CACHE.get(id(info.tokenizer))
        if cached is not None and cached[0] is info.tokenizer:
            return cached[1]
        roles = {role: info.token_id(tok) for role, tok in ROLES.items()}
        bos, end = info.token_id(BOS), info.token_id(END_OF_TURN)
        special = {i: t.content for i, t in info.tokenizer.get_added_tokens_decoder().items()
                   if t.special}
        special.update({bos: BOS, end: END_OF_TURN})
        special.update({i: ROLES[r] for r, i in roles.items()})
        tokens = cls(bos=bos, end=end, roles=roles, newline=tuple(info.encode(NEWLINE)),
                     special=special, special_ids=frozenset(special))
        _CACHE[id(info.tokenizer)] = (info.tokenizer, tokens)
        return tokens


_CACHE: dict[int, tuple[object, ChatTokens]] = {}


def render_chat(info, messages: Messages, *, train_on: str = "assistant"
                ) -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 = trained) of a conversation, a list of ``{"role", "content"}``
    dicts (an optional ``"train": False`` excludes a message from the loss). Raises
    :class:`ChatError` on an unknown role or when no token would be trained."""
    result = render_chats(info, [messages], train_on=train_on)[0]
    assert not isinstance(result, Exception)
    return result


def render_chats(info, conversations: Sequence[Messages], *, train_on: str = "assistant",
                 return_exceptions: bool = False) -> list:
    """:func:`render_chat` over many conversations with one batched encode. With
    ``return_exceptions`` a conversation that cannot be rendered gives its :class:`ChatError`
    in its place instead of raising."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on={train_on!r} is not one of {', '.join(TRAIN_ON)}")
    tokens = ChatTokens.of(info)
    encoded = _encode_contents(info, conversations)
    out: list = []
    for messages, contents in zip(conversations, encoded):
        try:
            out.append(_assemble(tokens, messages, contents, train_on))
        except ChatError as exc:
            if not return_exceptions:
                raise
            out.append(exc)
    return out


def render_prompt(info, messages: Messages) -> list[int]:
    """Token ids of a conversation followed by the generation prompt ``<|assistant|>\\n``: what a
    model is given to write the next assistant message (no loss mask: nothing is trained)."""
    result = render_prompts(info, [messages])[0]
    assert not isinstance(result, Exception)
    return result


def render_prompts(info, prompts: Sequence[Messages], *, return_exceptions: bool = False
                   ) -> list:
    """:func:`render_prompt` over many prompts with one batched encode (``return_exceptions`` as
    in :func:`render_chats`)."""
    tokens = ChatTokens.of(info)
    out: list = []
    for messages, contents in zip(prompts, _encode_contents(info, prompts)):
        try:
            ids, _ = _assemble(tokens, messages, contents, None)
            out.append(ids + [tokens.roles["assistant"], *tokens.newline])
        except ChatError as exc:
            if not return_exceptions:
                raise
            out.append(exc)
    return out


def render_completion(info, content: str) -> list[int]:
    """Token ids of an assistant reply as it follows :func:`render_prompt`: the content and its
    ``<|end|>`` (all of it trained in preference training)."""
    result = render_completions(info, [content])[0]
    assert not isinstance(result, Exception)
    return result


def render_completions(info, contents: Sequence[str], *, return_exceptions: bool = False
                       ) -> list:
    """:func:`render_completion` over many replies with one batched encode
    (``return_exceptions`` as in :func:`render_chats`)."""
    tokens = ChatTokens.of(info)
    out: list = []
    for ids in info.encode_batch([_text(c, 0, "assistant") for c in contents]):
        try:
            _check_special(tokens, ids, 0, "assistant")
            out.append(ids + [tokens.end])
        except ChatError as exc:
            if not return_exceptions:
                raise
            out.append(exc)
    return out


def chat_template_jinja() -> str:
    """The same template as a Jinja string for ``transformers`` (``tokenizer_config.json``'s
    ``chat_template``), with ``add_generation_prompt`` support. Assistant messages not marked
    ``"train": false`` sit in ``{% generation %}`` blocks, so ``apply_chat_template(...,
    return_assistant_tokens_mask=True)`` (and TRL's assistant-only loss) gives the mask of
    ``train_on="assistant"``."""
    roles = ", ".join(f"'{role}': '{tok}'" for role, tok in ROLES.items())
    return (
        "{%- set role_tokens = {" + roles + "} -%}"
        "{{- '" + BOS + "' -}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] not in role_tokens -%}"
        "{{- raise_exception('unknown role ' + message['role'] + "
        "': the chat template knows system, user and assistant') -}}"
        "{%- endif -%}"
        "{{- role_tokens[message['role']] + '\\n' -}}"
        "{%- if message['role'] == 'assistant' and message.get('train') is not false -%}"
        "{%- generation -%}{{- message['content'] | trim + '" + END_OF_TURN + "' -}}"
        "{%- endgeneration -%}"
        "{%- else -%}"
        "{{- message['content'] | trim + '" + END_OF_TURN + "' -}}"
        "{%- endif -%}"
        "{{- '\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '" + ASSISTANT + "\\n' -}}{%- endif -%}"
    )


def _encode_contents(info, conversations: Sequence[Messages]) -> list[list[list[int]]]:
    """Each message's stripped content encoded, in one ``encode_batch`` call."""
    texts = [_text(m.get("content"), i, m.get("role"))
             for messages in conversations for i, m in enumerate(messages)]
    flat = info.encode_batch(texts) if texts else []
    out, start = [], 0
    for messages in conversations:
        out.append(flat[start:start + len(messages)])
        start += len(messages)
    return out


def _text(content, index: int, role) -> str:
    if not isinstance(content, str):
        raise ChatError(f"message {index} ({role}): content must be a string, got "
                        f"{type(content).__name__}")
    return content.strip()


def _assemble(tokens: ChatTokens, messages: Messages, contents: list[list[int]],
              train_on: str | None) -> tuple[list[int], list[int]]:
    """Ids and mask of one conversation from its encoded contents (``train_on=None``: no
    message is trained, for prompts)."""
    last = None
    if train_on == "last":
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"),
                   default=None)
    ids, mask = [tokens.bos], [0]
    header_len, sep = 1 + len(tokens.newline), list(tokens.newline)
    for i, (message, content) in enumerate(zip(messages, contents)):
        role = message.get("role")
        if role not in tokens.roles:
            raise ChatError(f"message {i}: unknown role {role!r} (known: {', '.join(ROLES)})")
        _check_special(tokens, content, i, role)
        trained = int(_trained(message, i, role, train_on, last))
        ids.append(tokens.roles[role])
        ids.extend(sep)
        ids.extend(content)
        ids.append(tokens.end)
        ids.extend(sep)
        mask.extend([0] * header_len)
        mask.extend([trained] * (len(content) + 1))
        mask.extend([0] * len(sep))
    if train_on is not None and not any(mask):
        raise ChatError(f"no trainable token: {_why_untrained(messages, train_on)}")
    return ids, mask


def _trained(message: dict, index: int, role: str, train_on: str | None, last: int | None
             ) -> bool:
    flag = message.get("train")
    if flag is not None and not isinstance(flag, bool):
        raise ChatError(f"message {index} ({role}): 'train' must be true or false, got {flag!r}")
    if train_on is None or flag is False:
        return False
    if train_on == "all":
        return True
    if train_on == "last":
        return index == last
    return role == "assistant"


def _why_untrained(messages: Messages, train_on: str) -> str:
    roles = [m.get("role") for m in messages]
    if train_on != "all" and "assistant" not in roles:
        return (f"the conversation has no assistant message (roles: {', '.join(map(str, roles))}"
                "); an SFT example needs an assistant reply to learn")
    if train_on == "last":
        return ("the last assistant message has \"train\": false; with train_on=last only that "
                "message is trained")
    return (f"every message that train_on={train_on} would train has \"train\": false; "
            "keep at least one")


def _check_special(tokens: ChatTokens, ids: list[int], index: int, role) -> None:
    if tokens.special_ids.isdisjoint(ids):
        return
    tid = next(t for t in ids if t in tokens.special_ids)
    raise SpecialTokenInText(index, role, tokens.special[tid])
