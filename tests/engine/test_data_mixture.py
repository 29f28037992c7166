"""Mixture configs and the global document stream: validation, YAML, proportions at every prefix,
phase budgets, per-epoch permutations, determinism and snapshot/restore."""

from __future__ import annotations

import numpy as np
import pytest

from curation.tokens.layout import read_token_manifest
from engine.data import Mixture, Phase
from engine.data.stream import DocumentStream
from token_shards import random_lengths, write_token_dir

MAX_LEN = 300


def lengths_of(seed: int = 0, **counts: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g: np.array(random_lengths(rng, n, high=MAX_LEN)) for g, n in counts.items()}


def draws(stream: DocumentStream, n: int | None = None) -> list:
    out = []
    while (n is None or len(out) < n) and (d := stream.next()) is not None:
        out.append(d)
    return out


def test_phase_and_mixture_validation():
    assert Phase("A", {"web": 3, "books": 1}, 10).weights == {"web": 0.75, "books": 0.25}
    with pytest.raises(ValueError, match="weight of group 'books' is 0"):
        Phase("A", {"web": 1.0, "books": 0})
    with pytest.raises(ValueError, match="tokens is -5"):
        Phase("A", {"web": 1.0}, -5)
    with pytest.raises(ValueError, match="weights is empty"):
        Phase("A", {})
    with pytest.raises(ValueError, match="phase 'A' has no token budget but is not the last"):
        Mixture([Phase("A", {"web": 1.0}), Phase("B", {"web": 1.0}, 5)])
    with pytest.raises(ValueError, match="phase names repeat"):
        Mixture([Phase("A", {"web": 1.0}, 5), Phase("A", {"web": 1.0})])
    m = Mixture([Phase("A", {"web": 1.0}, 5), Phase("B", {"books": 1.0, "code": 2.0}, 7)])
    assert m.groups == ["books", "code", "web"] and m.total_tokens == 12
    with pytest.raises(ValueError, match=r"group 'code' is not in the token manifest "
                                         r"\(groups: books, web\)"):
        m.check_groups({"web": 10, "books": 10})
    with pytest.raises(ValueError, match="group 'code' has no tokens"):
        m.check_groups({"web": 10, "books": 10, "code": 0})


def test_from_yaml_and_from_dict(tmp_path):
    path = tmp_path / "mixture.yaml"
    path.write_text("seed: 1234\nphases:\n"
                    "  - {name: FOUNDATION, tokens: 2000000, weights: {web: 0.6, books: 0.4}}\n"
                    "  - {name: REASONING,  tokens: 500000,  weights: {books: 0.8, web: 0.2}}\n")
    m = Mixture.from_yaml(path)
    assert m.seed == 1234 and [p.name for p in m.phases] == ["FOUNDATION", "REASONING"]
    assert [p.tokens for p in m.phases] == [2_000_000, 500_000]
    assert m.phases[1].weights == pytest.approx({"books": 0.8, "web": 0.2})
    assert m.total_tokens == 2_500_000
    path.write_text("phases:\n  - {name: A, tokens: 10, weight: {web: 1}}\n")
    with pytest.raises(ValueError, match=r"mixture.yaml: mixture: phase #0 has unknown keys "
                                         r"\['weight'\]"):
        Mixture.from_yaml(path)
    with pytest.raises(ValueError, match="unknown keys"):
        Mixture.from_dict({"phases": [], "sed": 1})


def test_natural_weights_by_token_counts(tmp_path):
    write_token_dir(tmp_path, {"web": [100] * 30, "books": [500] * 2})
    m = Mixture.natural(read_token_manifest(tmp_path), seed=3)
    assert m.seed == 3 and m.total_tokens is None and len(m.phases) == 1
    assert m.phases[0].weights == pytest.approx({"web": 0.75, "books": 0.25})


def test_proportions_hold_at_every_prefix():
    """Deficits sum to 0 and a group's deficit only drops (by < one document) when it is picked
    from a non-negative value, so every |deficit| <= (groups - 1) * MAX_LEN at every prefix. Over
    200k tokens that bounds the share error by 2 * 300 / 200k = 0.003 < 0.01."""
    weights = {"web": 0.5, "books": 0.3, "code": 0.2}
    stream = DocumentStream(Mixture([Phase("A", weights, 200_000)]),
                            lengths_of(web=400, books=150, code=50))
    drawn = dict.fromkeys(weights, 0)
    total = 0
    for d in draws(stream):
        drawn[stream.groups[d.group]] += d.length
        total += d.length
        worst = max(abs(weights[g] * total - drawn[g]) for g in weights)
        assert worst <= 2 * MAX_LEN
    assert 200_000 <= total < 200_000 + MAX_LEN
    for g, w in weights.items():
        assert abs(drawn[g] / total - w) < 0.01


def test_phases_switch_at_their_budgets():
    mixture = Mixture([Phase("FOUNDATION", {"web": 0.6, "books": 0.4}, 50_000),
                       Phase("REASONING", {"books": 0.8, "web": 0.2}, 20_000)])
    stream = DocumentStream(mixture, lengths_of(web=300, books=300))
    ds = draws(stream)
    assert stream.exhausted and stream.next() is None
    phase_tokens = [0, 0]
    per_group = [{"web": 0, "books": 0}, {"web": 0, "books": 0}]
    for d in ds:
        phase_tokens[d.phase] += d.length
        per_group[d.phase][stream.groups[d.group]] += d.length
    # Each phase ends with the document that reaches its budget.
    assert 50_000 <= phase_tokens[0] < 50_000 + MAX_LEN
    assert 20_000 <= phase_tokens[1] < 20_000 + MAX_LEN
    assert [d.phase for d in ds] == sorted(d.phase for d in ds)
    first_b = next(i for i, d in enumerate(ds) if d.phase == 1)
    assert sum(d.length for d in ds[:first_b - 1]) < 50_000 <= sum(d.length for d in ds[:first_b])
    assert abs(per_group[0]["web"] / phase_tokens[0] - 0.6) < MAX_LEN / 50_000
    assert abs(per_group[1]["books"] / phase_tokens[1] - 0.8) < MAX_LEN / 20_000


def test_epochs_are_fresh_permutations_and_positions_carry_over_phases():
    lengths = lengths_of(a=7, b=5)
    mixture = Mixture([Phase("P1", {"a": 1.0}, 600), Phase("P2", {"a": 1.0, "b": 1.0}, 4000),
                       Phase("P3", {"a": 1.0})], seed=9)
    stream = DocumentStream(mixture, lengths)
    a_docs = [d.document for d in draws(stream, 400) if stream.groups[d.group] == "a"]
    epochs = [a_docs[i:i + 7] for i in range(0, 28, 7)]
    assert all(sorted(e) == list(range(7)) for e in epochs)  # each epoch: every document once
    assert len({tuple(e) for e in epochs}) > 1  # and epochs are shuffled differently
    assert np.array_equal(epochs[0], stream.permutation(0, 0))


def test_same_seed_same_stream_other_seed_other_stream():
    lengths = lengths_of(web=200, books=200)

    def order(seed):
        m = Mixture([Phase("A", {"web": 0.7, "books": 0.3})], seed=seed)
        return [(d.group, d.document) for d in draws(DocumentStream(m, lengths), 300)]

    assert order(5) == order(5)
    assert order(5) != order(6)
    assert sum(a != b for a, b in zip(order(5), order(6))) > 200


def test_snapshot_restore_and_dict_round_trip():
    mixture = Mixture([Phase("A", {"web": 0.6, "books": 0.4}, 10_000),
                       Phase("B", {"books": 1.0})], seed=2)
    lengths = lengths_of(web=20, books=30)
    reference = draws(DocumentStream(mixture, lengths), 500)
    for cut in (13, 70, 499):  # inside phase A, just after the switch, several epochs in
        stream = DocumentStream(mixture, lengths)
        draws(stream, cut)
        state = stream.state_to_dict(stream.snapshot())
        fresh = DocumentStream(mixture, lengths)
        fresh.restore(fresh.state_from_dict(state))
        assert draws(fresh, 500 - cut) == reference[cut:]
    with pytest.raises(ValueError, match="groups .* do not match"):
        DocumentStream(Mixture([Phase("A", {"web": 1.0})]), lengths).state_from_dict(state)
