"""LoRA: low-rank adapters on the model's linear layers, merge/unmerge, and adapters saved in
PEFT's layout so ``peft.PeftModel.from_pretrained`` loads them onto our Hugging Face export.

A :class:`LoRALinear` computes ``base(x) + (alpha / r) * B(A(dropout(x)))`` with ``A`` (r, in)
Kaiming-uniform and ``B`` (out, r) zero at init (PEFT's default), so a fresh adapter leaves
the model's output unchanged. Only ``A`` and ``B`` train; the base weight is frozen.

    apply_lora(model, LoRAConfig(r=8, alpha=16))
    ...train...
    save_adapter(model, "out/adapter")      # adapter_model.safetensors + adapter_config.json
    merge_lora(model)                       # W += (alpha / r) B A: plain-Linear speed

Saved keys follow PEFT's ``get_peft_model_state_dict`` on a ``LlamaForCausalLM``:
``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`` (the names of
:mod:`engine.model.hf`), so the adapter pairs with the model ``export_hf`` writes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from engine.model.hf import LAYER_NAMES

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
# Our module path inside a block → the Hugging Face Llama one ("attn.wq" → "self_attn.q_proj").
HF_MODULES = {ours.removesuffix(".weight"): theirs.removesuffix(".weight")
              for ours, theirs in LAYER_NAMES.items() if "norm" not in ours}
TARGETS = {path.rsplit(".", 1)[1]: path for path in HF_MODULES}   # "wq" → "attn.wq"


@dataclass
class LoRAConfig:
    """Which layers get adapters and how they are shaped."""

    r: int = 8
    """Rank of the update ``B A``."""
    alpha: float = 16.0
    """The update is scaled by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the adapter's input (training only)."""
    targets: tuple[str, ...] = ("wq", "wk", "wv", "wo")
    """Linear layers of every block to adapt: any of wq, wk, wv, wo, gate, up, down."""
    layers: tuple[int, ...] | None = None
    """Block indices to adapt; None: every block."""
    extra: dict = field(default_factory=dict)
    """Extra ``adapter_config.json`` fields (``base_model_name_or_path``, ...)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRAConfig.r must be >= 1 (got {self.r})")
        if not self.alpha > 0:
            raise ValueError(f"LoRAConfig.alpha must be positive (got {self.alpha})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRAConfig.dropout must be in [0, 1) (got {self.dropout})")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"LoRAConfig.targets {list(self.targets)}: unknown "
                             f"{unknown or 'empty'}; choose from {', '.join(TARGETS)}")
        self.targets = tuple(self.targets)

    @property
    def scaling(self) -> float:
        """``alpha / r``."""
        return self.alpha / self.r


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (see the module docstring)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.r, self.scaling = r, alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype,
                                               device=w.device))   # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype,
                                               device=w.device))   # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta(self) -> torch.Tensor:
        """The weight update ``(alpha / r) B A`` (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Adds the update into the base weight (the adapter path is then skipped)."""
        if not self.merged:
            self.base.weight += self.delta().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtracts the update back out of the base weight."""
        if self.merged:
            self.base.weight -= self.delta().to(self.base.weight.dtype)
            self.merged = False


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The adapted layers by their path in ``model`` (``blocks.0.attn.wq``)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, config: LoRAConfig | None = None) -> dict[str, LoRALinear]:
    """Freezes every parameter of ``model`` (a :class:`~engine.model.Transformer`) and wraps
    the target layers in :class:`LoRALinear`; returns them by path."""
    config = config or LoRAConfig()
    if lora_layers(model):
        raise ValueError("the model already has LoRA layers; apply_lora once")
    for p in model.parameters():
        p.requires_grad_(False)
    layers = range(len(model.blocks)) if config.layers is None else config.layers
    for i in layers:
        if not 0 <= i < len(model.blocks):
            raise ValueError(f"LoRAConfig.layers: block {i} does not exist (the model has "
                             f"{len(model.blocks)})")
        for target in config.targets:
            parent_path, attr = TARGETS[target].rsplit(".", 1)
            parent = model.blocks[i].get_submodule(parent_path)
            setattr(parent, attr, LoRALinear(getattr(parent, attr), config.r, config.alpha,
                                             config.dropout))
    model.lora_config = config
    return lora_layers(model)


def merge_lora(model: nn.Module) -> None:
    """Merges every adapter into its base weight."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undoes :func:`merge_lora`."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def remove_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replaces each :class:`LoRALinear` by its base ``nn.Linear`` (merged first when
    ``merge``), leaving the plain model that ``export_hf`` writes; parameters trainable again."""
    for path, layer in lora_layers(model).items():
        if merge:
            layer.merge()
        else:
            layer.unmerge()
        parent_path, attr = path.rsplit(".", 1)
        setattr(model.get_submodule(parent_path), attr, layer.base)
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


def peft_key(path: str) -> str:
    """The PEFT module prefix of our layer path: ``blocks.3.attn.wq`` →
    ``base_model.model.model.layers.3.self_attn.q_proj``."""
    _, i, rest = path.split(".", 2)
    if rest not in HF_MODULES:
        raise ValueError(f"{path}: not a LoRA-able linear layer of a block")
    return f"{PEFT_PREFIX}model.layers.{i}.{HF_MODULES[rest]}"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters under PEFT's saved names (``....q_proj.lora_A.weight``, ``lora_B``)."""
    out = {}
    for path, layer in lora_layers(model).items():
        key = peft_key(path)
        out[f"{key}.lora_A.weight"] = layer.lora_A.detach()
        out[f"{key}.lora_B.weight"] = layer.lora_B.detach()
    if not out:
        raise ValueError("the model has no LoRA layers; call apply_lora first")
    return out


def adapter_config(config: LoRAConfig) -> dict:
    """The ``adapter_config.json`` of PEFT's ``LoraConfig`` for these adapters."""
    data = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": config.r,
        "lora_alpha": config.alpha, "lora_dropout": config.dropout,
        "target_modules": sorted(HF_MODULES[TARGETS[t]].rsplit(".", 1)[1]
                                 for t in config.targets),
        "layers_to_transform": None if config.layers is None else list(config.layers),
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "modules_to_save": None, "use_rslora": False,
        "use_dora": False, "base_model_name_or_path": None, "revision": None,
    }
    data.update(config.extra)
    return data


def save_adapter(model: nn.Module, out_dir: str | Path) -> Path:
    """Writes ``adapter_model.safetensors`` and ``adapter_config.json`` (atomically); returns
    ``out_dir``. The adapters are saved unmerged whether or not the model is merged."""
    from safetensors.torch import save_file

    config = getattr(model, "lora_config", None)
    if config is None:
        raise ValueError("the model has no LoRA layers; call apply_lora first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to("cpu").contiguous() for k, v in adapter_state_dict(model).items()}
    tmp = out_dir / (ADAPTER_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out_dir / ADAPTER_WEIGHTS)
    tmp = out_dir / (ADAPTER_CONFIG + ".tmp")
    tmp.write_text(json.dumps(adapter_config(config), indent=2) + "\n")
    os.replace(tmp, out_dir / ADAPTER_CONFIG)
    return out_dir


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> dict[str, LoRALinear]:
    """Applies the adapters saved in ``adapter_dir`` (by :func:`save_adapter` or PEFT, LoRA on
    our target layers) to ``model``; returns the layers."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    data = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if data.get("peft_type") != "LORA":
        raise ValueError(f"{adapter_dir}: peft_type {data.get('peft_type')!r} is not 'LORA'")
    to_ours = {theirs.rsplit(".", 1)[1]: path.rsplit(".", 1)[1]
               for path, theirs in HF_MODULES.items()}
    targets = data["target_modules"]
    if isinstance(targets, str) or any(t not in to_ours for t in targets):
        raise ValueError(f"{adapter_dir}: target_modules {targets!r} must be a list of "
                         f"{', '.join(to_ours)}")
    layers = data.get("layers_to_transform")
    config = LoRAConfig(r=data["r"], alpha=data["lora_alpha"],
                        dropout=data.get("lora_dropout", 0.0),
                        targets=tuple(to_ours[t] for t in targets),
                        layers=None if layers is None else tuple(layers))
    adapted = apply_lora(model, config)
    tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    expected = set(adapter_state_dict(model))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"{adapter_dir}: adapter tensors do not match the config "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for path, layer in adapted.items():
            key = peft_key(path)
            layer.lora_A.copy_(tensors[f"{key}.lora_A.weight"])
            layer.lora_B.copy_(tensors[f"{key}.lora_B.weight"])
    return adapted
