"""PackedLoader end to end on small shards: batches equal the expected rank stream, phases and
group counts, the end of a finite mixture, exact resume (with and without prefetch), disjoint
ranks, varlen attention confined to documents, slice-only reads, prefetch errors and shutdown."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.data import Mixture, PackedBatch, PackedLoader, Phase
from engine.data.sources import GroupDocuments
from token_shards import random_lengths, rank_stream, write_token_dir

T, B = 32, 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three groups, 2 shards each, ~200 documents of 2..300 tokens (about 60k tokens)."""
    root = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    docs = write_token_dir(root, {"web": random_lengths(rng, 120), "books": random_lengths(
        rng, 60), "code": random_lengths(rng, 30, low=2, high=40)})
    return root, docs


TWO_PHASES = Mixture([Phase("FOUNDATION", {"web": 0.6, "books": 0.4}, 6000),
                      Phase("REASONING", {"books": 0.8, "code": 0.2}, 3000)], seed=7)


def take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def same(a: PackedBatch, b: PackedBatch) -> bool:
    return (torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
            and torch.equal(a.position_ids, b.position_ids)
            and torch.equal(a.cu_seqlens, b.cu_seqlens) and a.phase == b.phase
            and a.group_tokens == b.group_tokens and a.state == b.state)


def test_batches_follow_the_stream(shards):
    root, docs = shards
    mixture = Mixture.natural(PackedLoader(root, T, B).manifest, seed=3)
    stream, index = rank_stream(mixture, docs, max_tokens=20 * B * T + 1000)
    batches = take(PackedLoader(root, T, B, mixture=mixture, prefetch=0), 20)
    for n, batch in enumerate(batches):
        assert batch.input_ids.shape == batch.labels.shape == batch.position_ids.shape == (B, T)
        assert batch.input_ids.dtype == batch.labels.dtype == torch.int64
        assert batch.cu_seqlens.dtype == torch.int32 and batch.phase == "natural"
        cu = batch.cu_seqlens.tolist()
        assert cu[0] == 0 and cu[-1] == B * T and set(range(0, B * T + 1, T)) <= set(cu)
        assert batch.max_seqlen == max(np.diff(cu))
        assert same(batch.to("cpu"), batch)
        assert sum(batch.group_tokens.values()) == B * T
        for b in range(B):
            k = n * B + b
            window = stream[k * T:k * T + T + 1]
            assert batch.input_ids[b].tolist() == window[:-1].tolist()
            cross = index[k * T + 1:k * T + T + 1] != index[k * T:k * T + T]
            assert ((batch.labels[b] == -100).numpy() == cross).all()
            assert batch.labels[b][~torch.from_numpy(cross)].tolist() == window[1:][~cross].tolist()


def test_phases_group_counts_and_end_of_mixture(shards):
    root, docs = shards
    batches = list(PackedLoader(root, T, B, mixture=TWO_PHASES, prefetch=2))
    stream, _ = rank_stream(TWO_PHASES, docs)
    # 9000-odd tokens: the stream ends after the last budget; the partial last batch is dropped.
    assert len(batches) == (len(stream) - 1) // T // B
    assert 9000 <= len(stream) < 9000 + 600
    phases = [b.phase for b in batches]
    assert phases == sorted(phases, key=["FOUNDATION", "REASONING"].index)
    first = phases.index("REASONING")
    assert first in (6000 // (B * T), 6000 // (B * T) + 1)
    early = {g: sum(b.group_tokens.get(g, 0) for b in batches[:first - 1])
             for g in ("web", "books", "code")}
    assert early["code"] == 0 and abs(early["web"] / sum(early.values()) - 0.6) < 0.05
    late = {g: sum(b.group_tokens.get(g, 0) for b in batches[first + 1:])
            for g in ("web", "books", "code")}
    assert late["web"] == 0 and abs(late["books"] / sum(late.values()) - 0.8) < 0.1


@pytest.mark.parametrize("prefetch", [0, 3])
@pytest.mark.parametrize("where", ["mid-phase", "before the switch", "after the switch"])
def test_resume_yields_the_same_next_batches(shards, prefetch, where):
    root, _ = shards
    reference = list(PackedLoader(root, T, B, mixture=TWO_PHASES, prefetch=0))
    switch = [b.phase for b in reference].index("REASONING")  # holds both phases' documents
    assert switch == 46 and reference[switch - 1].phase == "FOUNDATION"
    cut = {"mid-phase": 5, "before the switch": switch, "after the switch": switch + 1}[where]
    with PackedLoader(root, T, B, mixture=TWO_PHASES, prefetch=prefetch) as first:
        assert all(same(a, b) for a, b in zip(take(first, cut), reference))
        state = json.loads(json.dumps(first.state_dict()))  # only the handed-out batches count
    assert state == reference[cut - 1].state and state["batches"] == cut
    resumed = PackedLoader(root, T, B, mixture=TWO_PHASES, prefetch=prefetch)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(reference) - cut
    assert all(same(a, b) for a, b in zip(rest, reference[cut:]))


def test_iterating_again_continues_and_state_is_checked(shards):
    root, _ = shards
    loader = PackedLoader(root, T, B, mixture=TWO_PHASES, prefetch=2)
    reference = list(PackedLoader(root, T, B, mixture=TWO_PHASES, prefetch=0))
    assert same(take(loader, 3)[-1], reference[2])
    assert same(take(loader, 1)[0], reference[3])
    with pytest.raises(ValueError, match="saved with seq_len=32 but this loader has seq_len=64"):
        PackedLoader(root, 64, B, mixture=TWO_PHASES).load_state_dict(loader.state_dict())
    with pytest.raises(ValueError, match="group 'news' is not in the token manifest"):
        PackedLoader(root, T, B, mixture=Mixture([Phase("A", {"news": 1.0})]))
    with pytest.raises(ValueError, match="seed=5 but the mixture has seed 7"):
        PackedLoader(root, T, B, mixture=TWO_PHASES, seed=5)
    with pytest.raises(ValueError, match="rank 2 / world_size 2"):
        PackedLoader(root, T, B, rank=2, world_size=2)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_see_disjoint_documents(shards, world_size):
    root, docs = shards
    single, index = rank_stream(TWO_PHASES, docs)
    real = single != 0  # EOS tokens carry no document id
    uid_at = dict(zip(single[real] // 64, index[real]))  # uid -> global stream index (one epoch)
    assert len(uid_at) == len(set(index))
    seen, counts = [], []
    for rank in range(world_size):
        batches = list(PackedLoader(root, T, 2, mixture=TWO_PHASES, rank=rank,
                                    world_size=world_size, prefetch=1))
        counts.append(len(batches))
        inputs = torch.cat([b.input_ids for b in batches]).flatten().numpy()
        uids = set((inputs[inputs != 0] // 64).tolist())
        assert all(uid_at[u] % world_size == rank for u in uids)  # only this rank's documents
        mine, _ = rank_stream(TWO_PHASES, docs, rank, world_size)
        assert np.array_equal(inputs, mine[:len(inputs)])
        seen.append(uids)
    # Every rank runs the same number of steps: as many as the worst-supplied rank can fill.
    supply = [len(rank_stream(TWO_PHASES, docs, r, world_size)[0]) for r in range(world_size)]
    assert counts == [min((n - 1) // T // 2 for n in supply)] * world_size
    union = set().union(*seen)
    assert sum(map(len, seen)) == len(union)  # disjoint
    covered = min(max(uid_at[u] for u in s) for s in seen)
    assert {u for u, i in uid_at.items() if i < covered} <= union <= set(uid_at)


def test_varlen_attention_stays_inside_documents(shards):
    root, _ = shards
    short_docs = Mixture([Phase("A", {"code": 1.0})])  # 2..40 tokens: many per row
    batch = take(PackedLoader(root, 64, 2, mixture=short_docs, prefetch=0), 3)[-1]
    cu = batch.cu_seqlens.long()
    n = 2 * 64
    segment = torch.repeat_interleave(torch.arange(len(cu) - 1), cu.diff())
    assert (batch.position_ids.flatten() == torch.arange(n) - cu[segment]).all()
    assert segment.max() >= 4  # the batch packs several documents
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    mask = causal & (segment[:, None] == segment[None, :])  # built from cu_seqlens only
    q, k, v = torch.randn(3, 1, 2, n, 16).unbind(0)  # (1, heads, B*T, head_dim)
    packed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for s in range(len(cu) - 1):
        a, b = cu[s], cu[s + 1]
        alone = F.scaled_dot_product_attention(q[..., a:b, :], k[..., a:b, :], v[..., a:b, :],
                                               is_causal=True)
        torch.testing.assert_close(packed[..., a:b, :], alone)
    # Changing another document's keys and values leaves a segment's output unchanged.
    k2, v2 = k.clone(), v.clone()
    k2[..., cu[1]:, :] += 5
    v2[..., cu[1]:, :] -= 3
    out2 = F.scaled_dot_product_attention(q, k2, v2, attn_mask=mask)
    torch.testing.assert_close(out2[..., :cu[1], :], packed[..., :cu[1], :])


def test_reads_only_the_slices_it_packs(tmp_path, monkeypatch):
    # One 200k-token document per shard: a loader that read documents or shards whole would
    # read at least 200k tokens for the first batch.
    write_token_dir(tmp_path, {"web": [200_000, 200_000]}, shards=2)
    reads = []
    original = GroupDocuments.read

    def spy(self, document, offset, count):
        out = original(self, document, offset, count)
        reads.append(out.size)
        return out

    monkeypatch.setattr(GroupDocuments, "read", spy)
    loader = PackedLoader(tmp_path, 128, 4, prefetch=0)
    assert all(isinstance(ds._bin, np.memmap) for g in loader.groups for ds in g.datasets)
    take(loader, 5)
    assert sum(reads) == 5 * 4 * (128 + 1)  # T + 1 tokens per row and nothing else


def test_prefetch_errors_reach_the_consumer_and_close_stops_the_thread(shards, monkeypatch):
    root, _ = shards
    loader = PackedLoader(root, T, B, prefetch=2)
    it = iter(loader)
    next(it)
    thread = loader._prefetcher._thread
    assert thread.is_alive() and thread.daemon
    loader.close()  # stops a producer blocked on its full queue
    assert not thread.is_alive() and loader._prefetcher is None
    with PackedLoader(root, T, B, prefetch=2) as loader:
        it = iter(loader)
        next(it)
        thread = loader._prefetcher._thread
    assert not thread.is_alive()
    loader = PackedLoader(root, T, B, prefetch=2)
    take(loader, 1)  # leaving the loop early also stops the thread
    assert loader._prefetcher is None

    calls = []

    def failing(self, document, offset, count):
        calls.append(1)
        if len(calls) > 10:
            raise OSError("disk went away")
        return GroupDocuments.__dict__["_orig"](self, document, offset, count)

    monkeypatch.setattr(GroupDocuments, "_orig", GroupDocuments.read, raising=False)
    monkeypatch.setattr(GroupDocuments, "read", failing)
    loader = PackedLoader(root, T, B, prefetch=2)
    with pytest.raises(OSError, match="disk went away"):
        list(loader)
    assert loader.state_dict()["batches"] >= 1  # batches before the error were handed out
