"""crucible's training engine: compiled ops, optimizers, model, trainer, distributed runtime.

The compiled extension (``engine._C``) is loaded on first use of an op, see ``engine.ops``.
"""
