"""PackedLoader: batches of packed token rows from a token-shard directory, per rank, resumable.

    loader = PackedLoader("out/tokens", seq_len=2048, batch_size=8,
                          mixture=Mixture.from_yaml("mixture.yaml"))
    for batch in loader:               # PackedBatch: input_ids, labels, position_ids, cu_seqlens
        ...
        ckpt["data"] = loader.state_dict()

How a batch is made:

1. every rank computes the same global document stream of the mixture (``engine.data.stream``;
   from the document lengths only, so it costs microseconds per document);
2. rank ``r`` of ``W`` takes the documents at global positions ``i`` with ``i % W == r``, so
   ranks read disjoint documents, and packs them into rows (``engine.data.packing``);
3. rows are read slice by slice from the memory-mapped ``.bin`` files and stacked into a batch.

Phase budgets count tokens of the global stream. A finite mixture ends when its last budget is
drawn: the loader stops at the last batch that *every* rank can fill, so all ranks run the same
number of steps; the partial batch (and the remaining tokens of better-supplied ranks) is dropped.

``state_dict()`` is the position after the last batch the caller received (prefetched batches
do not count): the stream position just before the document the next row starts in, plus the
token offset inside it. Loading it into a fresh loader with the same mixture, ``seq_len``,
``batch_size`` and ranks yields exactly the batches the first loader would have yielded next.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from curation.tokens.layout import TokenManifest, read_token_manifest
from engine.data.mixture import Mixture
from engine.data.packing import Document, RowPacker, pack_rows
from engine.data.prefetch import Prefetcher
from engine.data.sources import GroupDocuments
from engine.data.stream import DocumentStream, StreamState

STATE_FORMAT = "crucible.loader/1"


@dataclass
class PackedBatch:
    """One batch of packed rows (B rows of T tokens)."""

    input_ids: torch.Tensor
    """(B, T) int64 token ids."""
    labels: torch.Tensor
    """(B, T) int64 next-token targets; -100 where the target starts another document."""
    position_ids: torch.Tensor
    """(B, T) int64, restarting at 0 at every document segment of a row."""
    cu_seqlens: torch.Tensor
    """(S + 1,) int32 segment boundaries over the flattened B*T tokens: 0, ..., B*T (flash-attn
    varlen convention; every row boundary is a segment boundary)."""
    max_seqlen: int
    """Longest segment, for varlen attention kernels."""
    phase: str
    """Name of the mixture phase of the last document in the batch."""
    group_tokens: dict[str, int]
    """Input tokens of this batch per token group (for logging the realised mixture)."""
    state: dict[str, Any] = field(repr=False)
    """The loader position after this batch (what ``state_dict()`` returns once it is handed
    out)."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        """A copy with every tensor on ``device``."""
        move = partial(torch.Tensor.to, device=device, non_blocking=non_blocking)
        return PackedBatch(move(self.input_ids), move(self.labels), move(self.position_ids),
                           move(self.cu_seqlens), self.max_seqlen, self.phase,
                           dict(self.group_tokens), self.state)


class _Tag(NamedTuple):
    """What the loader remembers about a document it handed to the packer."""

    group: int
    phase: int
    before: StreamState  # the stream position just before this document was drawn
    rank_tokens: tuple[int, ...]  # tokens every rank had received before it


class _RankDocuments:
    """The documents of one rank, drawn from the global stream, with per-rank token totals."""

    def __init__(self, stream: DocumentStream, groups: list[GroupDocuments], rank: int,
                 world_size: int, rank_tokens: list[int]) -> None:
        self.stream, self.groups = stream, groups
        self.rank, self.world_size = rank, world_size
        self.rank_tokens = list(rank_tokens)
        self._lookahead: deque[Document] = deque()

    def _draw(self) -> Document | None:
        """Draws one global document; returns it if it is this rank's."""
        own = self.stream.index % self.world_size == self.rank
        before = self.stream.snapshot() if own else None
        totals = tuple(self.rank_tokens) if own else ()
        draw = self.stream.next()
        if draw is None:
            return None
        self.rank_tokens[draw.index % self.world_size] += draw.length
        if not own:
            return None
        group = self.groups[draw.group]
        return Document(draw.length, partial(group.read, draw.document),
                        _Tag(draw.group, draw.phase, before, totals))

    def next(self) -> Document | None:
        """This rank's next document, or None when the stream is exhausted."""
        if self._lookahead:
            return self._lookahead.popleft()
        while not self.stream.exhausted:
            doc = self._draw()
            if doc is not None:
                return doc
        return None

    def every_rank_has(self, tokens: int) -> bool:
        """Draws ahead until every rank has received ``tokens`` tokens or the stream ends;
        True in the first case. This rank's documents drawn meanwhile are kept for later."""
        below = sum(t < tokens for t in self.rank_tokens)
        while below and not self.stream.exhausted:
            r = self.stream.index % self.world_size
            before = self.rank_tokens[r]
            doc = self._draw()
            if doc is not None:
                self._lookahead.append(doc)
            if before < tokens <= self.rank_tokens[r]:
                below -= 1
        return below == 0


def _default_ranks(rank: int | None, world_size: int | None) -> tuple[int, int]:
    dist = torch.distributed
    initialized = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialized else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: need world_size >= 1 and "
                         "0 <= rank < world_size")
    return rank, world_size


class PackedLoader:
    """Iterable of :class:`PackedBatch` over a token-shard directory (see the module docstring).

    Args:
        root_or_manifest: the output directory of ``crucible tokenize``, or its manifest.
        seq_len: tokens per row (T); a row reads T + 1 tokens.
        batch_size: rows per batch (B) on this rank.
        mixture: phases and weights over the manifest's groups; default: one unlimited phase
            weighting every group by its token count (:meth:`Mixture.natural`).
        seed: seed of the default mixture; a given mixture carries its own seed.
        rank, world_size: this rank's slot; default torch.distributed's when it is
            initialised, else 0 and 1.
        prefetch: batches produced ahead in a background thread (0: produce on demand).
    """

    def __init__(self, root_or_manifest: str | Path | TokenManifest, seq_len: int,
                 batch_size: int, mixture: Mixture | None = None, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 prefetch: int = 2) -> None:
        for name, value, low in (("seq_len", seq_len, 1), ("batch_size", batch_size, 1),
                                 ("prefetch", prefetch, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"PackedLoader: {name} is {value!r}; give an integer >= {low}")
        manifest = root_or_manifest if isinstance(root_or_manifest, TokenManifest) \
            else read_token_manifest(root_or_manifest)
        if mixture is None:
            mixture = Mixture.natural(manifest, seed=seed)
        elif seed not in (0, mixture.seed):
            raise ValueError(f"PackedLoader: seed={seed} but the mixture has seed "
                             f"{mixture.seed}; set the seed in the mixture only")
        mixture.check_groups({g: info.tokens for g, info in manifest.groups.items()},
                             where=f"token manifest of {manifest.root}")
        self.manifest, self.mixture = manifest, mixture
        self.seq_len, self.batch_size, self.prefetch = seq_len, batch_size, prefetch
        self.rank, self.world_size = _default_ranks(rank, world_size)
        self.groups = [GroupDocuments(g, manifest.prefixes(g)) for g in mixture.groups]
        self._lengths = {g.name: g.lengths for g in self.groups}
        self._fingerprint = hashlib.sha256(json.dumps(
            {"seed": mixture.seed, "phases": [[p.name, p.tokens, sorted(p.weights.items())]
                                              for p in mixture.phases]}).encode()).hexdigest()[:16]
        stream = DocumentStream(mixture, self._lengths)
        self._state = self._position(0, stream, stream.snapshot(), [0] * self.world_size, 0)
        self._prefetcher: Prefetcher | None = None

    def _position(self, batches: int, stream: DocumentStream, before: StreamState,
                  rank_tokens: list[int] | tuple[int, ...], offset: int) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "mixture": self._fingerprint, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "rank": self.rank, "world_size": self.world_size,
                "batches": batches, "stream": stream.state_to_dict(before),
                "rank_tokens": list(rank_tokens), "offset": offset}

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out (JSON-able, a few integers per group and
        per rank)."""
        return json.loads(json.dumps(self._state))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from ``state`` (from :meth:`state_dict` of a loader with the same mixture,
        seq_len, batch_size, rank and world_size); stops any prefetching in progress."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"loader state: format {state.get('format')!r}, expected "
                             f"{STATE_FORMAT!r}")
        for key, mine in (("mixture", self._fingerprint), ("seq_len", self.seq_len),
                          ("batch_size", self.batch_size), ("rank", self.rank),
                          ("world_size", self.world_size)):
            if state.get(key) != mine:
                raise ValueError(f"loader state: saved with {key}={state.get(key)!r} but this "
                                 f"loader has {key}={mine!r}; build the loader with the settings "
                                 "of the run that saved the state")
        DocumentStream(self.mixture, self._lengths).state_from_dict(state["stream"])  # validates
        self.close()
        self._state = json.loads(json.dumps(state))

    def _batches(self, state: dict[str, Any]) -> Iterator[PackedBatch]:
        """Produces batches from ``state`` on, each carrying the state after it."""
        B, T = self.batch_size, self.seq_len
        stream = DocumentStream(self.mixture, self._lengths)
        stream.restore(stream.state_from_dict(state["stream"]))
        docs = _RankDocuments(stream, self.groups, self.rank, self.world_size,
                              state["rank_tokens"])
        packer = RowPacker(T, docs.next, offset=state["offset"])
        finite = self.mixture.total_tokens is not None
        names = [g.name for g in self.groups]
        batches = state["batches"]
        tokens = np.empty((B, T + 1), dtype=np.int64)
        segments = np.empty((B, T + 1), dtype=np.int64)
        while True:
            # Row k needs stream tokens up to k*T inclusive: stop where any rank would run out.
            if finite and not docs.every_rank_has((batches + 1) * B * T + 1):
                return
            group_tokens = dict.fromkeys(names, 0)
            phase = 0
            for b in range(B):
                row = packer.next_row()
                if row is None:
                    return
                tokens[b], segments[b], pieces = row
                for i, piece in enumerate(pieces):
                    tag = piece.document.tag
                    # the row's last token is only a target: it is the next row's first input
                    group_tokens[names[tag.group]] += piece.count - (i == len(pieces) - 1)
                phase = pieces[-1].document.tag.phase
            arrays = pack_rows(tokens, segments)
            batches += 1
            head = packer.head.tag
            yield PackedBatch(
                input_ids=torch.from_numpy(arrays.input_ids),
                labels=torch.from_numpy(arrays.labels),
                position_ids=torch.from_numpy(arrays.position_ids),
                cu_seqlens=torch.from_numpy(arrays.cu_seqlens),
                max_seqlen=arrays.max_seqlen,
                phase=self.mixture.phases[phase].name,
                group_tokens={g: n for g, n in group_tokens.items() if n},
                state=self._position(batches, stream, head.before, head.rank_tokens,
                                     packer.offset))

    def __iter__(self) -> Iterator[PackedBatch]:
        """Batches from the current position on; iterating again continues where the last batch
        handed out left off."""
        self.close()
        source = self._batches(self._state)
        if self.prefetch:
            source = self._prefetcher = Prefetcher(source, self.prefetch)
        try:
            for batch in source:
                self._state = batch.state
                yield batch
        finally:
            if source is self._prefetcher:
                self.close()

    def close(self) -> None:
        """Stops the prefetch thread, if one is running."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def __enter__(self) -> PackedLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
