"""Text to SentencePiece pieces for the n-gram LM: CCNet's line normalisation, and the piece model.

Normalisation (CCNet ``text_normalizer.normalize``, without accent stripping): strip, lower-case,
every digit to ``0``, unicode punctuation to ASCII, and non-printing characters (C0/C1 controls)
removed. It works on one line: split documents on ``\\n`` first (:func:`document_lines`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

UNICODE_PUNCT = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"',
    "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!",
    "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'",
    "…": "...", "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%", "►": "-",
}
_PUNCT_RE = re.compile(f"[{''.join(UNICODE_PUNCT)}]")
_DIGIT_RE = re.compile(r"\d")
_NON_PRINTING_RE = re.compile(f"[{''.join(map(chr, [*range(0, 32), *range(127, 160)]))}]")

DEFAULT_VOCAB_SIZE = 8000
MIN_VOCAB_SIZE = 100


def normalize_line(line: str) -> str:
    """CCNet's normalisation of one line (see the module docstring)."""
    line = line.strip().lower()
    if not line:
        return line
    line = _DIGIT_RE.sub("0", line)
    line = _PUNCT_RE.sub(lambda m: UNICODE_PUNCT[m.group()], line)
    return _NON_PRINTING_RE.sub("", line)


def document_lines(text: str | None) -> list[str]:
    """The normalised, non-empty lines of a document (CCNet scores each line as a sentence)."""
    if not text:
        return []
    return [n for n in map(normalize_line, text.split("\n")) if n]


def capped_vocab_size(lines: Sequence[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> int:
    """``vocab_size``, capped for small corpora at half the distinct whitespace words (more pieces
    than that would mostly be whole rare words, each seen once), and at least ``MIN_VOCAB_SIZE``."""
    distinct = len({w for line in lines for w in line.split()})
    return max(MIN_VOCAB_SIZE, min(vocab_size, distinct // 2))


def train_sentencepiece(lines: Iterable[str], model_prefix: str | Path, vocab_size: int) -> Path:
    """Trains a unigram SentencePiece model on normalised ``lines``; returns ``<prefix>.model``.

    ``hard_vocab_limit=False`` lets SentencePiece stop below ``vocab_size`` rather than fail
    when the text cannot fill it.
    """
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(lines)), model_prefix=str(model_prefix),
        vocab_size=vocab_size, model_type="unigram", character_coverage=0.9999,
        hard_vocab_limit=False, num_threads=2, minloglevel=2,
        input_sentence_size=2_000_000, shuffle_input_sentence=True)
    return Path(f"{model_prefix}.model")


def load_sentencepiece(path: str | Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(path))


def encode_lines(sp: spm.SentencePieceProcessor, lines: list[str]) -> list[list[str]]:
    """Pieces of each (already normalised) line, in one batched call."""
    return sp.encode(lines, out_type=str) if lines else []
