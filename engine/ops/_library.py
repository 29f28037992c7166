"""Loads crucible's compiled torch extension (``engine._C``) once, with an actionable error."""

from __future__ import annotations

import functools


@functools.cache
def load_library() -> None:
    """Import ``engine._C`` so its ops register under ``torch.ops.crucible``.

    Raises:
        ImportError: the extension was not built, with the command that builds it.
    """
    import torch  # noqa: F401  (libtorch must be loaded before the extension)

    try:
        from engine import _C  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "crucible's compiled extension engine._C is not available "
            f"({exc}). Build it with `make build`, or "
            "`pip install --no-build-isolation -e .` in an environment that has torch."
        ) from exc
