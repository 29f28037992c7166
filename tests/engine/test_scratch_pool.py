"""The scratch pool behind the CPU attention kernels (csrc/common/scratch.h) hands buffers out
again: after the first call, repeated calls of one shape add no resident memory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = """
import torch
from engine.ops.attention import flash_attention

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

q, k, v = (torch.randn(1, 1024, 8, 64, requires_grad=True) for _ in range(3))
grad = torch.randn(1, 1024, 8, 64)
after = []
for _ in range(6):
    flash_attention(q, k, v, causal=True).backward(grad)
    after.append(rss_mb())
print(" ".join(f"{x:.2f}" for x in after))
"""


def _rss_after_calls(pool: str) -> list[float]:
    # every allocation over 64 KiB is its own mapping, returned to the OS when freed, so RSS
    # shows exactly what is kept between calls
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "CRUCIBLE_SCRATCH_POOL": pool}
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env,
                         check=True).stdout
    return [float(x) for x in out.split()]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_pool_reuses_buffers_instead_of_growing():
    pooled = _rss_after_calls("1")
    plain = _rss_after_calls("0")
    # one packed panel here is 1024 x 8 x 64 x 4 B = 2 MiB; a pool that never reuses (the bug
    # this guards against) grew by 8 panels per call until it was full
    assert pooled[-1] - pooled[1] < 2.0, pooled
    # and it does keep the scratch between calls (about 6 panels of the backward pass)
    assert pooled[1] - plain[1] > 8.0, (pooled, plain)
