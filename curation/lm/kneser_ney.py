"""Interpolated modified Kneser-Ney n-gram estimation (Chen & Goodman 1998, as KenLM's lmplz
does it), written as an ARPA file that ``kenlm.Model`` loads.

Vocabulary ids: 0 ``<unk>``, 1 ``<s>``, 2 ``</s>``, then the training words in first-seen order.
Every table is a numpy array of n-gram rows sorted lexicographically; an n-gram of order k has the
int64 key ``index_{k-1}(prefix) * V + last_word`` (``index`` = its row in the order-(k-1) table),
so lookups are ``searchsorted`` over whole arrays and keys never overflow whatever V and k are.

The estimate, per order k (N = the model order):

* counts ``a``: raw counts at order N and for n-grams that start with ``<s>`` (nothing can precede
  it); otherwise the continuation count, the number of distinct words seen just before the n-gram.
* discounts ``D1, D2, D3+`` from the count-of-counts ``t1..t4`` of ``a``: ``Y = t1 / (t1 + 2 t2)``,
  ``Di = i - (i + 1) Y t(i+1) / ti``; when a ``ti`` is 0 or a ``Di`` falls outside ``(0, i]``
  (tiny corpora) the fallback ``0.5, 1.0, 1.5`` is used, as ``lmplz --discount_fallback`` does.
* ``p(w | h) = (a(h w) - D(a(h w))) / sum_x a(h x) + gamma(h) p(w | h')`` with
  ``gamma(h) = (D1 N1(h .) + D2 N2(h .) + D3 N3+(h .)) / sum_x a(h x)``; unigrams interpolate with
  the uniform distribution over the vocabulary less ``<s>`` (so ``<unk>`` gets ``gamma() / |V|``).
  In ARPA form the backoff weight of context h is ``gamma(h)``.

Pruning (``prune[k-1]`` = t): n-grams of order k >= 2 whose count ``a`` is at most t are dropped,
except those that are a prefix or suffix of a kept longer n-gram (ARPA needs both). The kept
n-grams keep their interpolated probabilities, computed from the pruned lower orders; a pruned
n-gram's probability becomes the backoff estimate ``b(h) p(w | h')``, and each backoff weight is
recomputed as ``b(h) = (1 - sum_kept p(w | h)) / (1 - sum_kept p(w | h'))`` so every conditional
distribution still sums to one. Perplexity on the training data rises; the file shrinks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPECIAL = (UNK, BOS, EOS)
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


@dataclass
class KneserNeyLM:
    """An estimated model: per-order tables of n-grams, counts, probabilities and backoffs."""

    order: int
    """Longest n-gram length N."""
    vocab: list[str]
    """Word of each id; ids 0, 1, 2 are ``<unk>``, ``<s>``, ``</s>``."""
    grams: list[np.ndarray]
    """``grams[k-1]``: (m_k, k) int32 word ids, lexicographically sorted."""
    keys: list[np.ndarray]
    """``keys[k-1]``: (m_k,) int64 hierarchical keys of ``grams[k-1]`` (sorted)."""
    counts: list[np.ndarray]
    """``counts[k-1]``: (m_k,) adjusted counts ``a`` (raw at order N and after ``<s>``)."""
    discounts: np.ndarray
    """(N, 3) float64: D1, D2, D3+ per order."""
    log10_prob: list[np.ndarray]
    """``log10_prob[k-1]``: (m_k,) log10 p(w | h) of each n-gram (``<s>``: -99)."""
    log10_backoff: list[np.ndarray]
    """``log10_backoff[k-1]``: (m_k,) log10 backoff weight with the n-gram as context (0: none)."""

    @property
    def word_ids(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.vocab)}

    def index(self, rows: np.ndarray) -> np.ndarray:
        """Rows of the tables holding n-grams ``rows`` ((m, k) word ids); -1 where absent."""
        rows = np.asarray(rows, dtype=np.int64)
        idx = rows[:, 0].copy()
        found = np.ones(len(rows), dtype=bool)
        for i in range(1, rows.shape[1]):
            keys = self.keys[i]
            query = idx * len(self.vocab) + rows[:, i]
            pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
            found &= keys[pos] == query
            idx = np.where(found, pos, 0)
        return np.where(found, idx, -1)

    def log10_conditional(self, history: Sequence[str], word: str) -> float:
        """log10 p(word | history) by backing off through the tables, as ARPA readers do."""
        ids = self.word_ids
        h = [ids.get(w, 0) for w in history][-(self.order - 1):] if self.order > 1 else []
        w = ids.get(word, 0)
        backoff = 0.0
        for start in range(len(h) + 1):
            context = h[start:]
            found = self.index(np.array([[*context, w]]))[0]
            if found >= 0:
                return backoff + float(self.log10_prob[len(context)][found])
            if context:
                at = self.index(np.array([context]))[0]
                if at >= 0:
                    backoff += float(self.log10_backoff[len(context) - 1][at])
        raise AssertionError("every word is a unigram")

    def num_grams(self) -> list[int]:
        return [len(g) for g in self.grams]


def estimate(sentences: Iterable[Sequence[str]], order: int = 5,
             prune: Sequence[int] | None = None) -> KneserNeyLM:
    """Estimates an interpolated modified Kneser-Ney model of ``order`` from tokenised sentences.

    ``prune``: per-order count thresholds (length ``order``; the unigram entry must be 0), e.g.
    ``[0, 0, 1, 1, 1]`` drops trigrams and longer seen once. Words equal to ``<s>``, ``</s>`` or
    ``<unk>`` inside a sentence are skipped.
    """
    if not 2 <= order <= 9:
        raise ValueError(f"order must be in [2, 9] (kenlm loads ARPA of order >= 2), got {order}")
    prune = [0] * order if prune is None else [int(t) for t in prune]
    if len(prune) != order or prune[0] != 0 or min(prune) < 0:
        raise ValueError(f"prune must hold {order} non-negative thresholds starting with 0 "
                         f"(unigrams are never pruned), got {prune}")
    vocab, stream, sentence_of = _encode(sentences)
    if not len(sentence_of):
        raise ValueError("no sentences to estimate a language model from")
    V = len(vocab)

    # Raw counts of every n-gram type that fits inside a padded sentence, order by order.
    grams, keys, raw = [np.arange(V, dtype=np.int32)[:, None]], [np.arange(V, dtype=np.int64)], []
    raw.append(np.bincount(stream, minlength=V).astype(np.int64))
    lm = KneserNeyLM(order, vocab, grams, keys, [], np.zeros((order, 3)), [], [])
    for k in range(2, order + 1):
        windows = np.lib.stride_tricks.sliding_window_view(stream, k)
        inside = sentence_of[: len(windows)] == sentence_of[k - 1:]
        windows = windows[inside]
        key = lm.index(windows[:, :-1]) * V + windows[:, -1]
        uniq, first, count = np.unique(key, return_index=True, return_counts=True)
        grams.append(windows[first].astype(np.int32))
        keys.append(uniq)
        raw.append(count.astype(np.int64))

    counts = []
    for k in range(1, order + 1):
        if k == order:
            counts.append(raw[k - 1])
            continue
        longer = grams[k]
        continuation = np.bincount(lm.index(longer[:, 1:]), minlength=len(grams[k - 1]))
        starts_bos = grams[k - 1][:, 0] == 1
        counts.append(np.where(starts_bos, raw[k - 1], continuation).astype(np.int64))
    counts[0][[0, 1]] = 0  # <unk> is never seen; <s> is never predicted

    discounts = np.array([_discounts(c[c > 0]) for c in counts])
    lm.counts, lm.discounts = counts, discounts
    _probabilities(lm, prune)
    return lm


def _encode(sentences: Iterable[Sequence[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Word ids of every ``<s> sentence </s>`` back to back, and each position's sentence number."""
    ids = {w: i for i, w in enumerate(SPECIAL)}
    vocab = list(SPECIAL)
    stream: list[int] = []
    lengths: list[int] = []
    for sentence in sentences:
        words = [w for w in sentence if w not in ids or ids[w] > 2]
        for w in words:
            if w not in ids:
                if not w or any(c.isspace() for c in w):
                    raise ValueError(f"word {w!r} is empty or holds whitespace; ARPA cannot "
                                     "store it")
                ids[w] = len(vocab)
                vocab.append(w)
        stream.append(1)
        stream.extend(ids[w] for w in words)
        stream.append(2)
        lengths.append(len(words) + 2)
    sentence_of = np.repeat(np.arange(len(lengths)), lengths)
    return vocab, np.array(stream, dtype=np.int64), sentence_of


def _discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """D1, D2, D3+ from the count-of-counts (Chen & Goodman eq. 26), or the fallback."""
    t = np.bincount(np.minimum(counts, 5), minlength=6)[1:5].astype(np.float64)
    if np.any(t == 0):
        return FALLBACK_DISCOUNTS
    y = t[0] / (t[0] + 2 * t[1])
    d = tuple(float(i - (i + 1) * y * t[i] / t[i - 1]) for i in (1, 2, 3))
    if not all(0 < d[i - 1] <= i for i in (1, 2, 3)):
        return FALLBACK_DISCOUNTS
    return d


def _discount_of(counts: np.ndarray, d: np.ndarray) -> np.ndarray:
    return np.where(counts == 0, 0.0, d[np.minimum(np.maximum(counts, 1), 3) - 1])


def _probabilities(lm: KneserNeyLM, prune: Sequence[int]) -> None:
    """Fills log10 probabilities and backoffs, pruning tables in place (see module docstring)."""
    N, V = lm.order, len(lm.vocab)
    # Interpolation weights of every context, from the full (unpruned) counts.
    first: list[np.ndarray] = [np.empty(0)]  # first[k-1]: discounted term of each order-k n-gram
    gamma: list[np.ndarray] = []  # gamma[k-1]: weight of order-k n-grams as contexts
    a1 = lm.counts[0]
    total = a1.sum()
    d1 = _discount_of(a1, lm.discounts[0])
    first[0] = (a1 - d1) / total
    gamma0 = d1.sum() / total
    for k in range(2, N + 1):
        a, d = lm.counts[k - 1], _discount_of(lm.counts[k - 1], lm.discounts[k - 1])
        ctx = lm.index(lm.grams[k - 1][:, :-1])
        den = np.bincount(ctx, weights=a, minlength=len(lm.grams[k - 2]))
        mass = np.bincount(ctx, weights=d, minlength=len(lm.grams[k - 2]))
        with np.errstate(invalid="ignore", divide="ignore"):
            gamma.append(np.where(den > 0, mass / den, 1.0))
        first.append((a - d) / den[ctx])
    gamma.append(np.ones(len(lm.grams[N - 1])))

    # Keep masks, longest order first, so that prefixes and suffixes of kept n-grams stay.
    keep = [np.full(len(g), k == 0) for k, g in enumerate(lm.grams)]
    for k in range(N, 1, -1):
        keep[k - 1] |= lm.counts[k - 1] > prune[k - 1]
        kept = lm.grams[k - 1][keep[k - 1]]
        if k > 2:
            keep[k - 2][lm.index(kept[:, :-1])] = True
            keep[k - 2][lm.index(kept[:, 1:])] = True
    for k in range(2, N + 1):
        rows = keep[k - 1]
        lm.grams[k - 1] = lm.grams[k - 1][rows]
        lm.counts[k - 1], first[k - 1] = lm.counts[k - 1][rows], first[k - 1][rows]
        gamma[k - 1] = gamma[k - 1][rows]
        prefix = lm.index(lm.grams[k - 1][:, :-1])
        lm.keys[k - 1] = prefix * V + lm.grams[k - 1][:, -1]

    # Interpolated probabilities, shortest order first.
    uniform = 1.0 / (V - 1)  # every word but <s>
    prob = [first[0] + gamma0 * uniform]
    prob[0][1] = 0.0
    for k in range(2, N + 1):
        g = lm.grams[k - 1]
        ctx, lower = lm.index(g[:, :-1]), lm.index(g[:, 1:])
        prob.append(first[k - 1] + gamma[k - 2][ctx] * prob[k - 2][lower])

    # Backoff weights; where pruning removed some of a context's continuations, renormalise.
    backoff = [g.copy() for g in gamma]
    if any(prune):
        for k in range(2, N + 1):
            g = lm.grams[k - 1]
            ctx, lower = lm.index(g[:, :-1]), lm.index(g[:, 1:])
            m = len(lm.grams[k - 2])
            seen_high = np.bincount(ctx, weights=prob[k - 1], minlength=m)
            seen_low = np.bincount(ctx, weights=prob[k - 2][lower], minlength=m)
            with np.errstate(invalid="ignore", divide="ignore"):
                backoff[k - 2] = np.where(seen_low < 1.0, (1.0 - seen_high) / (1.0 - seen_low),
                                          1.0)
    backoff[N - 1] = np.ones(len(lm.grams[N - 1]))
    with np.errstate(divide="ignore"):
        lm.log10_prob = [np.log10(p) for p in prob]
        lm.log10_backoff = [np.log10(np.maximum(b, 1e-300)) for b in backoff]
    lm.log10_prob[0][1] = -99.0
    for k in range(1, N + 1):  # contexts ending in </s> are never used
        lm.log10_backoff[k - 1][lm.grams[k - 1][:, -1] == 2] = 0.0


def write_arpa(lm: KneserNeyLM, path: str | Path) -> None:
    """Writes ``lm`` as an ARPA file (atomically: a temp file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    vocab = np.array(lm.vocab, dtype=object)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for k, g in enumerate(lm.grams, start=1):
            f.write(f"ngram {k}={len(g)}\n")
        for k, g in enumerate(lm.grams, start=1):
            f.write(f"\n\\{k}-grams:\n")
            words = vocab[g[:, 0]]
            for j in range(1, k):
                words = words + " " + vocab[g[:, j]]
            probs = [f"{p:.7f}" for p in lm.log10_prob[k - 1]]
            if k < lm.order:
                lines = [f"{p}\t{w}\t{b:.7f}\n" for p, w, b in
                         zip(probs, words, lm.log10_backoff[k - 1])]
            else:
                lines = [f"{p}\t{w}\n" for p, w in zip(probs, words)]
            f.writelines(lines)
        f.write("\n\\end\\\n")
    tmp.replace(path)
