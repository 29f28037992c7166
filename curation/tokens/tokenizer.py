"""The tokenizer: a byte-level BPE trained with the ``tokenizers`` library, saved as
``tokenizer.json``; or any existing ``tokenizer.json``.

Special tokens are part of the vocabulary but never added implicitly: ``encode`` adds nothing,
and the callers that need a document end or a chat role add the id themselves, in one place each
(``crucible tokenize`` appends the document end; :mod:`curation.tokens.chat` renders chats). So a
tokenizer whose post-processor adds a BOS cannot double it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

DOCUMENT_END = "<|endoftext|>"
BOS = "<|bos|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"
DEFAULT_SPECIAL_TOKENS = (DOCUMENT_END, BOS, PAD, SYSTEM, USER, ASSISTANT, END_OF_TURN)
# Names other tokenizers give the document end, in order of preference.
DOCUMENT_END_ALIASES = (DOCUMENT_END, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>")


def train_tokenizer(texts: Iterable[str], vocab_size: int, *,
                    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
                    min_frequency: int = 2, length: int | None = None,
                    show_progress: bool = False):
    """Trains a byte-level BPE tokenizer (GPT-2's pre-tokenisation and byte alphabet) on
    ``texts``; returns a ``tokenizers.Tokenizer``. Special tokens take the first ids, in the
    order given. ``length`` (the number of texts) only feeds the progress bar."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    special = list(dict.fromkeys(special_tokens))
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special):
        raise ValueError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs the "
                         f"{len(alphabet)} byte symbols plus {len(special)} special tokens")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=special, initial_alphabet=alphabet,
                                  show_progress=show_progress)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    return tokenizer


@dataclass
class TokenizerInfo:
    """A loaded tokenizer with what token shards record about it."""

    tokenizer: object          # tokenizers.Tokenizer
    path: Path
    sha256: str                # of the tokenizer.json bytes: shards name the exact tokenizer
    vocab_size: int            # including added and special tokens
    eos_id: int                # the document end appended to every pre-training document

    def token_id(self, token: str) -> int:
        """The id of a special token; a clear error when this tokenizer lacks it."""
        tid = self.tokenizer.token_to_id(token)
        if tid is None:
            raise KeyError(f"{self.path}: the tokenizer has no {token!r} token; train one with "
                           "`crucible tokenizer train` (it adds the chat and document tokens) "
                           "or pass a tokenizer that has it")
        return tid

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without any special token added."""
        fast = getattr(self.tokenizer, "encode_batch_fast", None)
        encode = fast if fast is not None else self.tokenizer.encode_batch
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without any special token added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids


def load_tokenizer(path: str | Path, eos_token: str | None = None) -> TokenizerInfo:
    """Loads a ``tokenizer.json`` (a file, or a directory holding one). The document end is
    ``eos_token`` or the first of :data:`DOCUMENT_END_ALIASES` the vocabulary has."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"tokenizer {path} does not exist; train one with "
                                "`crucible tokenizer train` or give a tokenizer.json")
    raw = path.read_bytes()
    try:
        tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as exc:  # the Rust error names the broken field
        raise ValueError(f"{path}: not a tokenizers JSON file ({exc})") from exc
    names = (eos_token,) if eos_token else DOCUMENT_END_ALIASES
    eos_id = next((tokenizer.token_to_id(n) for n in names
                   if tokenizer.token_to_id(n) is not None), None)
    if eos_id is None:
        raise ValueError(f"{path}: no document-end token among {', '.join(names)}; name the "
                         "tokenizer's end-of-document token with --eos-token")
    return TokenizerInfo(tokenizer=tokenizer, path=path, sha256=hashlib.sha256(raw).hexdigest(),
                         vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
                         eos_id=eos_id)


def save_tokenizer(tokenizer, out_dir: str | Path, *, model_max_length: int = 4096) -> Path:
    """Writes ``tokenizer.json`` and the small files ``transformers`` reads beside it
    (``tokenizer_config.json`` with the special tokens and the chat template, and
    ``special_tokens_map.json``), so ``AutoTokenizer.from_pretrained(out_dir)`` works.
    Returns the ``tokenizer.json`` path."""
    from curation.tokens.chat import chat_template_jinja

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tokenizer.json"
    tmp = out_dir / "tokenizer.json.tmp"
    tokenizer.save(str(tmp))
    tmp.replace(path)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    present = {name: tok for name, tok in (("bos_token", BOS), ("eos_token", DOCUMENT_END),
                                            ("pad_token", PAD)) if tok in vocab}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": False, **present}
    if all(t in vocab for t in (BOS, USER, ASSISTANT, END_OF_TURN)):
        config["chat_template"] = chat_template_jinja()
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(present, indent=2) + "\n")
    return path


def iter_texts(paths: Iterable[Path], text_column: str = "text",
               batch_size: int = 1024) -> Iterator[list[str]]:
    """Batches of texts from Parquet shards, read one record batch at a time."""
    import pyarrow.parquet as pq

    for path in paths:
        pf = pq.ParquetFile(path)
        if text_column not in pf.schema_arrow.names:
            raise ValueError(f"shard {path}: column {text_column!r} is missing (found: "
                             f"{', '.join(pf.schema_arrow.names)}); set --text-column")
        for batch in pf.iter_batches(batch_size=batch_size, columns=[text_column]):
            yield [t for t in batch.column(0).to_pylist() if t]
