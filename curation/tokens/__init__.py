"""From curated text to tokens: the tokenizer, Megatron-format token shards, SFT and preference
examples with loss masks, and the one chat template they share.

Like the rest of ``curation`` this package never imports torch; the training-side loader that
reads its shards lives in ``engine.data``.
"""
