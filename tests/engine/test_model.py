"""The Llama-style decoder: counts, attention kernels agree, packed batches, HF Llama export."""

from __future__ import annotations

import pytest
import torch

from engine.model import PRESETS, Transformer, count_params, flops_per_token, preset
from engine.model.config import ModelConfig, keys_per_query
from engine.model.hf import export_hf, import_hf


def test_parameter_counts_match_the_modules_and_gpt2_size():
    for name, config in PRESETS.items():
        if count_params(config) > 2e8:
            continue
        model = Transformer(config, "sdpa")
        assert sum(p.numel() for p in model.parameters()) == count_params(config), name
    assert 123e6 < count_params(PRESETS["gpt2-124m"]) < 125e6
    assert 1.2e9 < count_params(PRESETS["llama-1b"]) < 1.3e9


def test_flop_count_is_6n_plus_causal_attention():
    c = PRESETS["gpt2-124m"]
    n_matmul = count_params(c, embeddings=False) - c.n_layers * 2 * c.dim - c.dim + \
        c.vocab_size * c.dim * (1 if c.tie_embeddings else 0)
    T = 1024
    expected = 6 * n_matmul + 6 * 2 * c.n_layers * c.dim * (T + 1) / 2
    assert flops_per_token(c, T) == pytest.approx(expected, rel=1e-9)
    assert keys_per_query(4, causal=True) == 2.5 and keys_per_query(4, causal=False) == 4
    assert keys_per_query(4, causal=True, window=2) == (1 + 2 + 2 + 2) / 4


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        ModelConfig(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="not a multiple of n_heads"):
        ModelConfig(dim=66, n_heads=4)
    with pytest.raises(KeyError, match="presets"):
        preset("huge")


@pytest.mark.parametrize("tie", [False, True])
def test_transformers_llama_loads_the_export_with_the_same_logits(tmp_path, tie):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = Transformer(preset("tiny", tie_embeddings=tie), "crucible")
    export_hf(model, tmp_path / "hf")
    theirs = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"))
    x = torch.randint(0, 512, (2, 33))
    with torch.no_grad():
        ours, ref = model(x), theirs(x).logits
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
    back = import_hf(tmp_path / "hf", "sdpa")
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours, atol=2e-5, rtol=1e-4)


def test_crucible_and_sdpa_attention_agree_and_packing_isolates_documents():
    torch.manual_seed(1)
    config = preset("tiny")
    ours = Transformer(config, "crucible")
    sdpa = Transformer(config, "sdpa")
    sdpa.load_state_dict(ours.state_dict())
    docs = [torch.randint(0, 512, (n,)) for n in (5, 11, 16)]   # 32 tokens = 2 rows of 16
    packed = torch.cat(docs).view(2, 16)
    # row 0 holds documents 0 and 1 (5 + 11 tokens), row 1 document 2
    cu = torch.tensor([0, 5, 16, 32], dtype=torch.int32)
    pos = torch.cat([torch.arange(5), torch.arange(11), torch.arange(16)]).view(2, 16)
    with torch.no_grad():
        a = ours(packed, pos, cu, 16)
        b = sdpa(packed, pos, cu, 16)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        for doc, (s, e) in zip(docs, [(0, 5), (5, 16), (16, 32)]):
            alone = ours(doc[None])
            torch.testing.assert_close(a.view(32, -1)[s:e], alone[0], atol=1e-5, rtol=1e-4)


def test_backward_through_the_fused_attention_matches_sdpa():
    torch.manual_seed(2)
    config = preset("tiny")
    ours, sdpa = Transformer(config, "crucible"), Transformer(config, "sdpa")
    sdpa.load_state_dict(ours.state_dict())
    x = torch.randint(0, 512, (2, 24))
    for m in (ours, sdpa):
        torch.nn.functional.cross_entropy(m(x).flatten(0, 1), x.flatten()).backward()
    for (name, p), q in zip(ours.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
