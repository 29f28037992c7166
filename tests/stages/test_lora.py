"""LoRA: identity at init, merge/unmerge, PEFT's adapter layout, and PEFT loading it."""

from __future__ import annotations

import json

import pytest
import torch
from stage_models import tiny_model

from engine.model.hf import export_hf
from stages.lora import (LoRAConfig, LoRALinear, apply_lora, load_adapter, lora_layers,
                         merge_lora, remove_lora, save_adapter, unmerge_lora)

X = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(5))


def perturbed_lora(config: LoRAConfig | None = None, seed: int = 0):
    """A tiny model with LoRA whose B is random (a trained adapter's stand-in)."""
    model = tiny_model(seed=seed)
    apply_lora(model, config or LoRAConfig(r=4, alpha=8))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)
    return model


def test_fresh_adapters_leave_the_output_unchanged_and_only_they_train():
    model = tiny_model()
    with torch.no_grad():
        base = model(X)
    layers = apply_lora(model, LoRAConfig(r=4, alpha=8, targets=("wq", "wv", "down")))
    assert sorted(layers) == sorted(f"blocks.{i}.{p}" for i in range(2)
                                    for p in ("attn.wq", "attn.wv", "mlp.down"))
    assert all(float(layer.lora_B.detach().abs().sum()) == 0 for layer in layers.values())
    assert all(float(layer.lora_A.detach().abs().sum()) > 0 for layer in layers.values())
    with torch.no_grad():
        torch.testing.assert_close(model(X), base, rtol=0, atol=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{path}.lora_{ab}" for path in layers for ab in "AB"}


def test_merged_equals_unmerged_and_unmerge_restores_the_base_weight():
    model = perturbed_lora()
    wq = model.blocks[0].attn.wq
    before = wq.base.weight.clone()
    with torch.no_grad():
        unmerged = model(X)
        merge_lora(model)
        assert wq.merged and not torch.equal(wq.base.weight, before)
        torch.testing.assert_close(model(X), unmerged, rtol=1e-5, atol=1e-6)
        unmerge_lora(model)
        torch.testing.assert_close(wq.base.weight, before, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(X), unmerged, rtol=1e-5, atol=1e-6)
        plain = remove_lora(model, merge=True)
        assert not lora_layers(plain) and type(plain.blocks[0].attn.wq) is torch.nn.Linear
        torch.testing.assert_close(plain(X), unmerged, rtol=1e-5, atol=1e-6)


def test_layer_math_is_base_plus_scaled_low_rank_update():
    base = torch.nn.Linear(6, 5, bias=False)
    layer = LoRALinear(base, r=2, alpha=6.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 6)
    expected = x @ base.weight.T + 3.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected)


def test_saved_adapter_has_peft_names_shapes_and_config(tmp_path):
    model = perturbed_lora(LoRAConfig(r=4, alpha=8, targets=("wq", "wk", "wv", "wo", "up")))
    save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    # The safetensors header, read by hand: PEFT's saved key names, no ".default." adapter
    # name, A (r, in) and B (out, r).
    raw = (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    header.pop("__metadata__")
    hf = {"q_proj": (32, 32), "k_proj": (16, 32), "v_proj": (16, 32), "o_proj": (32, 32),
          "up_proj": (model.config.ffn_dim, 32)}
    expected = {}
    for i in range(2):
        for name, (out, inp) in hf.items():
            part = "mlp" if name == "up_proj" else "self_attn"
            key = f"base_model.model.model.layers.{i}.{part}.{name}"
            expected[f"{key}.lora_A.weight"] = [4, inp]
            expected[f"{key}.lora_B.weight"] = [out, 4]
    assert {k: v["shape"] for k, v in header.items()} == expected
    assert {v["dtype"] for v in header.values()} == {"F32"}
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["lora_dropout"] == 0.0
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert config["bias"] == "none" and config["fan_in_fan_out"] is False
    assert config["use_rslora"] is False and config["use_dora"] is False


def test_adapter_round_trip_gives_the_same_logits(tmp_path):
    model = perturbed_lora()
    save_adapter(model, tmp_path / "adapter")
    fresh = tiny_model()        # the same base weights (same seed)
    load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), model(X), rtol=0, atol=0)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        load_adapter(fresh, tmp_path / "adapter")


def test_adapter_keys_name_the_hf_llama_modules_they_adapt(tmp_path):
    """What PEFT does on load, by hand: strip ``base_model.model.``, find that module in
    transformers' LlamaForCausalLM and add ``alpha / r * B @ A`` to its weight."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    base = tiny_model()
    export_hf(base, tmp_path / "hf")
    model = perturbed_lora(LoRAConfig(r=4, alpha=8, targets=("wq", "wk", "wv", "wo", "down")))
    save_adapter(model, tmp_path / "adapter")
    theirs = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    with torch.no_grad():
        for key, a in tensors.items():
            if ".lora_A." not in key:
                continue
            path = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            assert path.rsplit(".", 1)[1] in config["target_modules"]
            b = tensors[key.replace("lora_A", "lora_B")]
            theirs.get_submodule(path).weight += config["lora_alpha"] / config["r"] * b @ a
        torch.testing.assert_close(theirs(X).logits, model(X), rtol=1e-4, atol=2e-5)


def test_peft_loads_the_adapter_on_the_hf_export_with_our_logits(tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base = tiny_model()
    export_hf(base, tmp_path / "hf")
    model = perturbed_lora(LoRAConfig(r=4, alpha=8, targets=("wq", "wk", "wv", "wo", "gate")))
    save_adapter(model, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(
        transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")),
        str(tmp_path / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(theirs(X).logits, model(X), rtol=1e-4, atol=2e-5)
