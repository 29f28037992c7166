"""Loading and saving the stages' models: a policy from a Hugging Face Llama export or a
training checkpoint, and a reward model in ``LlamaForSequenceClassification`` layout.

    model = load_policy("out/demo-train/hf")            # or out/demo-train (its last checkpoint)
    save_reward_model(reward, "out/reward/hf")          # score.weight + config.json
    reward = load_reward_model("out/reward/hf")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.model.hf import config_from_hf, hf_config, import_hf, to_hf_state_dict
from engine.model.transformer import Transformer
from stages.reward import RewardModel


def _checkpoint_dir(path: Path) -> Path | None:
    """``path`` when it is a checkpoint, else the last checkpoint of a run directory."""
    from engine.checkpoint import META, checkpoint_dirs

    if (path / META).exists():
        return path
    found = checkpoint_dirs(path / "checkpoints")
    return found[-1] if found else None


def load_policy(path: str | Path, attention: str = "crucible") -> Transformer:
    """A model from an HF export directory (``config.json`` + safetensors), a training
    checkpoint (``checkpoints/step-N``) or a training run's ``out_dir`` (its last
    checkpoint)."""
    path = Path(path)
    if (path / "config.json").exists():
        return import_hf(path, attention)
    ckpt = _checkpoint_dir(path) if path.is_dir() else None
    if ckpt is None:
        raise FileNotFoundError(f"model {path}: neither an HF export (config.json + "
                                "*.safetensors) nor a training checkpoint; give the --export "
                                "directory of `crucible train` or its out_dir")
    import torch.distributed.checkpoint as dcp

    from engine.checkpoint import _quiet_single_process, verify_checkpoint
    from engine.config import train_config_from_dict

    verify_checkpoint(ckpt)
    extra = torch.load(ckpt / "rank-0.pt", weights_only=True)
    if "config" not in extra:
        raise ValueError(f"checkpoint {ckpt}: rank-0.pt records no training config; export "
                         "the model with `crucible train ... --export DIR` and load that")
    config = train_config_from_dict(extra["config"])
    model = Transformer(config.model_config(), attention)
    state = {"model": model.state_dict()}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(ckpt))
    model.load_state_dict(state["model"])
    return model


def save_reward_model(model: RewardModel, out_dir: str | Path) -> Path:
    """Writes the reward model as a ``LlamaForSequenceClassification`` (``num_labels`` 1: the
    trunk's tensors plus ``score.weight``) into ``out_dir``; returns it."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = model.backbone
    tensors = {k: v for k, v in to_hf_state_dict(backbone).items() if k != "lm_head.weight"}
    tensors["score.weight"] = backbone.output.weight
    dtype = backbone.embed.weight.dtype
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    config = hf_config(backbone.config, dtype)
    config.update(architectures=["LlamaForSequenceClassification"], num_labels=1,
                  pad_token_id=0, tie_word_embeddings=False)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_reward_model(path: str | Path, attention: str = "crucible") -> RewardModel:
    """The reward model :func:`save_reward_model` wrote (also the ``hf/`` folder of a
    ``crucible reward`` output directory, or that directory itself)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").exists() and (path / "hf" / "config.json").exists():
        path = path / "hf"
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"reward model {path}: no model.safetensors; give the output "
                                "directory of `crucible reward`")
    data = json.loads((path / "config.json").read_text())
    if data.get("num_labels") != 1:
        raise ValueError(f"{path}: not a reward model (config.json num_labels is "
                         f"{data.get('num_labels')!r}, expected 1); train one with "
                         "`crucible reward`")
    tensors = load_file(str(path / "model.safetensors"))
    score = tensors.pop("score.weight")
    config = config_from_hf({**data, "tie_word_embeddings": True})
    trunk = Transformer(config, attention).to(score.dtype)
    trunk.load_state_dict(_our_names(tensors, trunk), strict=False)
    reward = RewardModel.from_policy(trunk)
    with torch.no_grad():
        reward.backbone.output.weight.copy_(score)
    return reward


def _our_names(tensors: dict[str, torch.Tensor], model: Transformer) -> dict[str, torch.Tensor]:
    from engine.model.hf import LAYER_NAMES

    inverse = {v: k for k, v in LAYER_NAMES.items()}
    state = {"embed.weight": tensors["model.embed_tokens.weight"],
             "norm.weight": tensors["model.norm.weight"]}
    for name, tensor in tensors.items():
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            state[f"blocks.{i}.{inverse[rest]}"] = tensor
    missing = set(model.state_dict()) - set(state) - {"output.weight"}
    if missing:
        raise ValueError(f"reward model tensors missing: {sorted(missing)[:3]}")
    return state
