"""The global document stream of a mixture: which document of which group comes next.

The order is a pure function of the mixture (phases, weights, budgets, seed) and the document
lengths of each group, so every rank computes the same stream from the ``.idx`` files alone:

* inside a phase, the next group is the one furthest behind its share, i.e. with the largest
  deficit ``weight * tokens_drawn_in_phase - tokens_drawn_from_group_in_phase`` (ties go to the
  first name in sorted order). Deficits sum to zero, so every group's share of the phase's tokens
  stays within one document of its weight: the proportions hold at every prefix, not only on
  average as with sampling;
* inside a group, documents follow a permutation drawn for each epoch by a numpy Generator seeded
  from ``(seed, crc32(group), epoch)``; a group that runs out starts its next epoch. A group's
  position carries over from one phase to the next, so a later phase does not repeat documents;
* a phase ends with the document that brings its token count to the budget (it overshoots by
  less than one document); the stream ends when the last phase's budget is reached.

The state is a few integers per group (:meth:`DocumentStream.snapshot`), so any position can be
saved and restored without replaying the stream.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from engine.data.mixture import Mixture


class Draw(NamedTuple):
    """One document of the stream."""

    index: int
    """Position in the global stream (0, 1, 2, ...)."""
    group: int
    """Index of the group in ``DocumentStream.groups`` (sorted names)."""
    document: int
    """Document index inside the group (its datasets concatenated in manifest order)."""
    length: int
    """Tokens in the document."""
    phase: int
    """Index of the phase the document was drawn in."""


class StreamState(NamedTuple):
    """The position of a :class:`DocumentStream` between two documents (per-group lists are
    indexed like ``DocumentStream.groups``)."""

    phase: int
    phase_tokens: int
    drawn: tuple[int, ...]
    epoch: tuple[int, ...]
    cursor: tuple[int, ...]
    index: int
    tokens: int


class DocumentStream:
    """Iterates ``Draw``\\ s of ``mixture`` over groups whose documents have ``lengths``."""

    def __init__(self, mixture: Mixture, lengths: Mapping[str, np.ndarray]) -> None:
        mixture.check_groups({g: int(np.asarray(v).sum(dtype=np.int64))
                              for g, v in lengths.items()}, where="dataset")
        self.mixture = mixture
        self.groups: list[str] = list(mixture.groups)
        self._lengths = [np.asarray(lengths[g]) for g in self.groups]
        self._salt = [zlib.crc32(g.encode()) for g in self.groups]
        slot = {g: i for i, g in enumerate(self.groups)}
        # Per phase: (group index, normalised weight) in sorted-name order, for the tie rule.
        self._phase_weights = [[(slot[g], p.weights[g]) for g in sorted(p.weights)]
                               for p in mixture.phases]
        self._budgets = [p.tokens for p in mixture.phases]
        self._perm: list[tuple[int, np.ndarray] | None] = [None] * len(self.groups)
        self.restore(StreamState(0, 0, (0,) * len(self.groups), (0,) * len(self.groups),
                                 (0,) * len(self.groups), 0, 0))

    @property
    def exhausted(self) -> bool:
        """True once the last phase's budget has been drawn."""
        return self._phase >= len(self._budgets)

    @property
    def index(self) -> int:
        """Global stream position of the next document."""
        return self._index

    def permutation(self, group: int, epoch: int) -> np.ndarray:
        """The document order of ``group`` (index into ``groups``) in ``epoch``."""
        cached = self._perm[group]
        if cached is not None and cached[0] == epoch:
            return cached[1]
        rng = np.random.default_rng([self.mixture.seed, self._salt[group], epoch])
        perm = rng.permutation(len(self._lengths[group]))
        self._perm[group] = (epoch, perm)
        return perm

    def next(self) -> Draw | None:
        """The next document, or None when the stream is exhausted."""
        phase = self._phase
        if phase >= len(self._budgets):
            return None
        total, drawn = self._phase_tokens, self._drawn
        best, best_deficit = -1, -np.inf
        for g, w in self._phase_weights[phase]:
            deficit = w * total - drawn[g]
            if deficit > best_deficit:
                best, best_deficit = g, deficit
        g = best
        cursor = self._cursor[g]
        if cursor == len(self._lengths[g]):
            self._epoch[g] += 1
            cursor = 0
        document = int(self.permutation(g, self._epoch[g])[cursor])
        self._cursor[g] = cursor + 1
        length = int(self._lengths[g][document])
        draw = Draw(self._index, g, document, length, phase)
        self._index += 1
        self._tokens += length
        drawn[g] += length
        self._phase_tokens = total + length
        budget = self._budgets[phase]
        if budget is not None and self._phase_tokens >= budget:
            self._phase += 1
            self._phase_tokens = 0
            self._drawn = [0] * len(self.groups)
        return draw

    def snapshot(self) -> StreamState:
        """The current position (cheap: a few integers per group)."""
        return StreamState(self._phase, self._phase_tokens, tuple(self._drawn),
                           tuple(self._epoch), tuple(self._cursor), self._index, self._tokens)

    def restore(self, state: StreamState) -> None:
        """Moves to a position returned by :meth:`snapshot`."""
        self._phase, self._phase_tokens = state.phase, state.phase_tokens
        self._drawn, self._epoch = list(state.drawn), list(state.epoch)
        self._cursor = list(state.cursor)
        self._index, self._tokens = state.index, state.tokens

    def state_to_dict(self, state: StreamState) -> dict[str, Any]:
        """A JSON-able form of ``state`` keyed by group name."""
        return {"phase": state.phase, "phase_tokens": state.phase_tokens,
                "index": state.index, "tokens": state.tokens,
                "groups": {g: {"drawn": state.drawn[i], "epoch": state.epoch[i],
                               "cursor": state.cursor[i]} for i, g in enumerate(self.groups)}}

    def state_from_dict(self, data: Mapping[str, Any]) -> StreamState:
        """Inverse of :meth:`state_to_dict`; raises if the groups differ from this stream's."""
        groups = data["groups"]
        if sorted(groups) != self.groups:
            raise ValueError(f"stream state: groups {sorted(groups)} do not match the mixture's "
                             f"{self.groups}; resume with the mixture the state was saved with")
        return StreamState(int(data["phase"]), int(data["phase_tokens"]),
                           tuple(int(groups[g]["drawn"]) for g in self.groups),
                           tuple(int(groups[g]["epoch"]) for g in self.groups),
                           tuple(int(groups[g]["cursor"]) for g in self.groups),
                           int(data["index"]), int(data["tokens"]))
