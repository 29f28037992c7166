"""Packing variable-length examples into rows for varlen attention, and right-padding.

An example is ``(ids, weights)``: ``weights[i]`` is the loss weight of token ``i`` as a target
(the SFT loss mask; 0 on a prompt, 1 on a reply). Packed, token ``i`` predicts token ``i + 1``
of the *same* example with weight ``weights[i + 1]``; an example's last token predicts nothing,
so no loss crosses an example boundary, and ``cu_seqlens`` keeps attention inside each example
(``position_ids`` restart at 0 for each). Examples are laid out in order, a new row starting
when the next one does not fit; each row's tail is padding, its own segment with weight 0.

    packed = pack_examples([(ids, mask), ...], seq_len=512)
    logits = model(packed.input_ids, packed.position_ids, packed.cu_seqlens, packed.max_seqlen)
    nll = token_nll(logits, packed.targets)           # (B, T)
    loss = (nll * packed.weights).sum()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class PackedExamples:
    """B rows of T tokens holding whole examples (see the module docstring)."""

    input_ids: torch.Tensor
    """(B, T) int64."""
    targets: torch.Tensor
    """(B, T) int64: the next token of the same example (0 where there is none)."""
    weights: torch.Tensor
    """(B, T) float32 loss weight of each target (0 at example ends and padding)."""
    position_ids: torch.Tensor
    """(B, T) int64, restarting at 0 at every example and at the padding."""
    cu_seqlens: torch.Tensor
    """(S + 1,) int32 segment offsets over the flattened B*T tokens."""
    max_seqlen: int
    """Longest segment."""
    example: torch.Tensor
    """(B, T) int64: which input example each token belongs to (-1 on padding)."""
    num_examples: int
    """How many examples were packed."""

    def to(self, device: torch.device | str) -> PackedExamples:
        """A copy with every tensor on ``device``."""
        return PackedExamples(*(t.to(device) for t in (
            self.input_ids, self.targets, self.weights, self.position_ids, self.cu_seqlens)),
            self.max_seqlen, self.example.to(device), self.num_examples)

    def per_example(self, values: torch.Tensor) -> torch.Tensor:
        """Sums (B, T) ``values`` over each example's tokens: (num_examples,)."""
        flat, ex = values.flatten(), self.example.flatten()
        keep = ex >= 0
        out = torch.zeros(self.num_examples, dtype=values.dtype, device=values.device)
        return out.index_add(0, ex[keep], flat[keep])


def pack_examples(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int | None = None,
                  pad_id: int = 0) -> PackedExamples:
    """Packs ``examples`` in order into rows of ``seq_len`` tokens (default: the longest
    example, so one example per row at worst). An example longer than ``seq_len`` is an error:
    examples are never cut (tokenize with ``--max-length`` or raise ``seq_len``)."""
    if not examples:
        raise ValueError("pack_examples: no examples given")
    lengths = [len(ids) for ids, _ in examples]
    seq_len = seq_len or max(lengths)
    rows: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(lengths):
        if n == 0:
            raise ValueError(f"pack_examples: example {i} is empty")
        if n > seq_len:
            raise ValueError(f"pack_examples: example {i} has {n} tokens > seq_len {seq_len}; "
                             "raise seq_len or tokenize with --max-length")
        if used + n > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    B, T = len(rows), seq_len
    ids = np.full((B, T), pad_id, dtype=np.int64)
    targets = np.zeros((B, T), dtype=np.int64)
    weights = np.zeros((B, T), dtype=np.float32)
    positions = np.zeros((B, T), dtype=np.int64)
    owner = np.full((B, T), -1, dtype=np.int64)
    segments = [0]
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            x, w = examples[i]
            n = len(x)
            ids[r, at:at + n] = x
            targets[r, at:at + n - 1] = x[1:]
            weights[r, at:at + n - 1] = np.asarray(w[1:], dtype=np.float32)
            positions[r, at:at + n] = np.arange(n)
            owner[r, at:at + n] = i
            at += n
            segments.append(r * T + at)
        if at < T:
            positions[r, at:] = np.arange(T - at)
            segments.append((r + 1) * T)
    cu = np.asarray(segments, dtype=np.int32)
    return PackedExamples(torch.from_numpy(ids), torch.from_numpy(targets),
                          torch.from_numpy(weights), torch.from_numpy(positions),
                          torch.from_numpy(cu), int(np.diff(cu).max()), torch.from_numpy(owner),
                          len(examples))


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) of every position, in float32: (B, T, V), (B, T) → (B, T)."""
    return -F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                            reduction="none").view(targets.shape)


def pad_right(sequences: Sequence[np.ndarray], pad_id: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and the lengths (B,) of ``sequences``."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    if not len(sequences) or int(lengths.min()) == 0:
        raise ValueError("pad_right: every sequence needs at least one token")
    out = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.int64)
    for i, s in enumerate(sequences):
        out[i, :len(s)] = torch.as_tensor(np.asarray(s), dtype=torch.int64)
    return out, lengths
