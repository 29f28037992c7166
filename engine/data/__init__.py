"""The training-side reader of token shards: mixtures with curriculum phases, a deterministic
global document stream, packing into rows without cross-document attention, and a resumable,
rank-sharded, prefetching loader.

    from engine.data import Mixture, PackedLoader
    loader = PackedLoader("out/tokens", seq_len=2048, batch_size=8,
                          mixture=Mixture.from_yaml("mixture.yaml"))
"""

from engine.data.loader import PackedBatch, PackedLoader
from engine.data.mixture import Mixture, Phase

__all__ = ["Mixture", "PackedBatch", "PackedLoader", "Phase"]
