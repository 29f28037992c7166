"""The post-training stages on top of the engine's model: supervised fine-tuning (packed,
full or LoRA), a Bradley–Terry reward model, DPO and its variants, and their evaluations.

    stages.examples  read the examples `crucible tokenize --kind sft|preference` writes
    stages.packing   pack examples into varlen rows; right-pad sequences
    stages.loop      the shared loop: accumulation, FusedAdamW, warmup + cosine, metrics
    stages.lora      LoRA layers, merge/unmerge, PEFT-layout adapters
    stages.sft       SFT objective, multi-task mixtures
    stages.reward    reward model and its loss
    stages.dpo       the DPO-family loss registry, cached reference log-probs
    stages.eval      perplexity, preference accuracy, GSM8K exact match
    stages.ppo       PPO and GRPO (stages.rl_math: their arithmetic)
    stages.constitutional  critique → revision preference pairs against principles (RLAIF)
    stages.model_io  policies from HF exports or checkpoints; reward models in HF layout
    stages.commands  the stage commands as functions (stages.cli: their command lines)
    stages.demo      `crucible demo` (stages.demo_report: its HTML report)
"""
