"""Export to, and import from, the Hugging Face Llama layout: ``model.safetensors`` +
``config.json`` that ``transformers.LlamaForCausalLM.from_pretrained`` loads.

Our RoPE uses the rotate-half layout of HF's Llama, so the q/k projections need no permutation:
export is a renaming of tensors. Loading uses safetensors only (no pickle).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.model.config import ModelConfig
from engine.model.transformer import Transformer

# Our per-block parameter names -> the Hugging Face Llama layout (PEFT adapters use them too).
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}


def hf_config(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """The ``config.json`` of a LlamaForCausalLM with our shape."""
    if config.window is not None:
        raise ValueError("sliding-window attention has no LlamaForCausalLM equivalent; export "
                         "a model with window=None")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim, "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings, "attention_bias": False,
        "mlp_bias": False, "initializer_range": config.init_std,
        "torch_dtype": str(dtype).removeprefix("torch."), "dtype": str(dtype).removeprefix("torch."),
    }


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our parameters under LlamaForCausalLM's names (tied output weight stored once)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name == "embed.weight":
            out["model.embed_tokens.weight"] = tensor
        elif name == "norm.weight":
            out["model.norm.weight"] = tensor
        elif name == "output.weight":
            if not model.config.tie_embeddings:
                out["lm_head.weight"] = tensor
        else:
            _, i, rest = name.split(".", 2)
            out[f"model.layers.{i}.{LAYER_NAMES[rest]}"] = tensor
    return out


def export_hf(model: Transformer, out_dir: str | Path, dtype: torch.dtype | None = None
              ) -> Path:
    """Writes ``model.safetensors`` and ``config.json`` into ``out_dir``; returns it."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = dtype or next(model.parameters()).dtype
    tensors = {k: v.detach().to("cpu", dtype).contiguous()
               for k, v in to_hf_state_dict(model).items()}
    tmp = out_dir / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps(hf_config(model.config, dtype), indent=2)
                                         + "\n")
    return out_dir


def config_from_hf(data: dict) -> ModelConfig:
    """Our config from a Llama ``config.json`` dict."""
    if data.get("model_type") != "llama":
        raise ValueError(f"model_type {data.get('model_type')!r} is not 'llama'")
    theta = data.get("rope_theta") or (data.get("rope_parameters") or {}).get("rope_theta",
                                                                               10000.0)
    return ModelConfig(vocab_size=data["vocab_size"], dim=data["hidden_size"],
                       n_layers=data["num_hidden_layers"], n_heads=data["num_attention_heads"],
                       n_kv_heads=data.get("num_key_value_heads"),
                       ffn_dim=data["intermediate_size"],
                       max_seq_len=data.get("max_position_embeddings", 2048),
                       rope_theta=float(theta), norm_eps=data.get("rms_norm_eps", 1e-5),
                       tie_embeddings=bool(data.get("tie_word_embeddings", False)))


def import_hf(path: str | Path, attention: str = "crucible") -> Transformer:
    """Loads a Llama checkpoint directory (``config.json`` + ``*.safetensors``) as our model."""
    from safetensors.torch import load_file

    path = Path(path)
    config = config_from_hf(json.loads((path / "config.json").read_text()))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    inverse = {v: k for k, v in LAYER_NAMES.items()}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name == "model.embed_tokens.weight":
            state["embed.weight"] = tensor
        elif name == "model.norm.weight":
            state["norm.weight"] = tensor
        elif name == "lm_head.weight":
            state["output.weight"] = tensor
        elif name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            if rest not in inverse:
                raise ValueError(f"{path}: unexpected tensor {name} (biases or other extras "
                                 "are not part of this architecture)")
            state[f"blocks.{i}.{inverse[rest]}"] = tensor
    if config.tie_embeddings:
        state["output.weight"] = state["embed.weight"]
    dtype = next(iter(tensors.values())).dtype
    model = Transformer(config, attention).to(dtype)
    model.load_state_dict(state, strict=True)
    return model
