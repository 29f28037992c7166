"""Imports every built-in step module so the registry knows all step names."""

from __future__ import annotations

import importlib

BUILTIN_STEP_MODULES = (
    "curation.steps.normalize",
    "curation.steps.exact_dedup",
    "curation.dedup.minhash_dedup",
    "curation.filters.language_id",
    "curation.filters.gopher",
    "curation.filters.c4",
    "curation.filters.fineweb",
    "curation.filters.decontaminate",
    "curation.filters.perplexity",
    "curation.filters.quality",
    "curation.pii.scrub",
)


def load_builtin_steps(plugins: list[str] | tuple[str, ...] = ()) -> None:
    """Registers the built-in steps and those of ``plugins`` (module names); idempotent.
    Models load later, in ``Step.setup``."""
    for module in BUILTIN_STEP_MODULES:
        importlib.import_module(module)
    for module in plugins:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"plugin module {module!r} cannot be imported ({exc}); check the "
                             "config's plugins list and PYTHONPATH") from exc
