"""Tiny token-shard directories for the engine.data tests, and the stream they should yield.

Document ``uid`` (1, 2, ... across all groups) of length n holds ``uid * 64 + 1 + (p % 63)`` at
position p < n - 1 and the EOS id 0 last, so a token tells which document it came from
(``token // 64``) and shifts inside a document are visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curation.tokens.indexed import IndexedWriter
from curation.tokens.layout import FORMAT, write_token_manifest
from engine.data import Mixture
from engine.data.stream import DocumentStream

EOS = 0
VOCAB = 65000


def document(uid: int, length: int) -> np.ndarray:
    """The tokens of document ``uid``."""
    tokens = uid * 64 + 1 + np.arange(length) % 63
    tokens[-1] = EOS
    return tokens


def write_token_dir(root: Path, lengths: dict[str, list[int]], shards: int = 2,
                    dtype: str = "uint16") -> dict[str, list[np.ndarray]]:
    """Writes ``root/<group>/shard-NNNN.{bin,idx}`` (documents split over ``shards`` files) and
    the manifest; returns each group's documents in group order."""
    docs: dict[str, list[np.ndarray]] = {}
    groups = {}
    uid = 1
    for group, group_lengths in lengths.items():
        docs[group] = []
        prefixes = []
        for s, part in enumerate(np.array_split(np.asarray(group_lengths), shards)):
            prefix = f"{group}/shard-{s:04d}"
            writer = IndexedWriter(root / prefix, dtype)
            for n in part:
                docs[group].append(document(uid, int(n)))
                writer.add(docs[group][-1])
                uid += 1
            writer.finish()
            prefixes.append(prefix)
        groups[group] = {"prefixes": prefixes, "documents": len(group_lengths),
                         "tokens": int(sum(group_lengths))}
    assert uid < 1024, "token ids would overflow uint16"
    write_token_manifest(root, {"format": FORMAT, "complete": True, "dtype": dtype,
                                "tokenizer": {"vocab_size": VOCAB, "eos_id": EOS, "sha256": "x"},
                                "groups": groups})
    return docs


def random_lengths(rng: np.random.Generator, n: int, low: int = 2, high: int = 300) -> list[int]:
    """``n`` document lengths uniform in [low, high]."""
    return rng.integers(low, high + 1, size=n).tolist()


def rank_stream(mixture: Mixture, docs: dict[str, list[np.ndarray]], rank: int = 0,
                world_size: int = 1, max_tokens: int = 10**6) -> tuple[np.ndarray, np.ndarray]:
    """What rank ``rank`` should pack: its documents of the global stream concatenated (up to
    ``max_tokens`` tokens), and the global stream index of every token."""
    stream = DocumentStream(mixture, {g: np.array([len(d) for d in v]) for g, v in docs.items()})
    tokens, index, total = [], [], 0
    while total < max_tokens and (draw := stream.next()) is not None:
        if draw.index % world_size == rank:
            tokens.append(docs[stream.groups[draw.group]][draw.document])
            index.append(np.full(draw.length, draw.index))
            total += draw.length
    return np.concatenate(tokens), np.concatenate(index)
