"""KV-cache generation: the same logits as a full forward, and left padding changes nothing."""

from __future__ import annotations

import torch

from engine.model import Transformer, preset
from engine.model.generate import _step, generate, left_pad


def model():
    torch.manual_seed(0)
    return Transformer(preset("tiny"), "sdpa").eval()


def test_cached_decoding_gives_the_full_forward_logits():
    m = model()
    seq = torch.randint(3, 512, (1, 12))
    with torch.no_grad():
        full = m(seq)
        cache = [[] for _ in m.blocks]
        mask = torch.ones(1, 5, dtype=torch.long)
        first = _step(m, seq[:, :5], torch.arange(5)[None], mask, cache)
        torch.testing.assert_close(first, full[:, 4], atol=1e-5, rtol=1e-5)
        for t in range(5, 12):
            mask = torch.ones(1, t + 1, dtype=torch.long)
            step = _step(m, seq[:, t:t + 1], torch.tensor([[t]]), mask, cache)
            torch.testing.assert_close(step, full[:, t], atol=1e-5, rtol=1e-5)


def test_left_padded_batch_generates_what_each_prompt_generates_alone():
    m = model()
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20]]
    batch = generate(m, prompts, max_new_tokens=6, pad_id=2, temperature=0)
    assert batch.sequences.shape == (3, 6 + 6) and batch.prompt_length == 6
    for i, p in enumerate(prompts):
        alone = generate(m, [p], max_new_tokens=6, pad_id=2, temperature=0)
        assert batch.sequences[i, 6:].tolist() == alone.sequences[0, len(p):].tolist()
        torch.testing.assert_close(batch.logprobs[i], alone.logprobs[0], atol=1e-5, rtol=1e-5)
    ids, mask = left_pad(prompts, pad_id=2)
    assert ids[2].tolist() == [2, 2, 2, 2, 2, 20] and mask[2].tolist() == [0] * 5 + [1]


def test_rows_stop_at_eos_and_sampling_is_seeded():
    m = model()
    first = generate(m, [[5, 6]], max_new_tokens=4, pad_id=2, temperature=0).sequences[0, 2]
    out = generate(m, [[5, 6], [7, 8]], max_new_tokens=5, pad_id=2, eos_id=int(first),
                   temperature=0)
    assert out.sequences[0, 2] == first and out.attention_mask[0, 3:].sum() == 0
    a = generate(m, [[5, 6]], max_new_tokens=8, pad_id=2, temperature=1.0, top_k=20,
                 generator=torch.Generator().manual_seed(3))
    b = generate(m, [[5, 6]], max_new_tokens=8, pad_id=2, temperature=1.0, top_k=20,
                 generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.sequences, b.sequences)
