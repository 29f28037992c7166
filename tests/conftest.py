"""Shared test settings: deterministic seeds and a fixed thread count for the CPU kernels."""

import pytest


@pytest.fixture(autouse=True)
def _seed():
    try:
        import torch
    except ImportError:  # the curation-only install has no torch
        yield
        return
    torch.manual_seed(0)
    yield
