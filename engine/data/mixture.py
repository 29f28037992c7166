"""Data mixtures: curriculum phases, each weighting token groups and holding a token budget.

A :class:`Mixture` is configuration only; :class:`engine.data.stream.DocumentStream` turns it into
the deterministic global document order. The YAML form:

    seed: 1234
    phases:
      - {name: FOUNDATION, tokens: 2000000, weights: {web: 0.6, books: 0.4}}
      - {name: REASONING,  tokens: 500000,  weights: {books: 0.8, web: 0.2}}

Groups are the names of ``manifest.json`` (sources, or quality buckets like head/middle/tail).
Budgets count tokens of the global stream (all ranks together); only the last phase may leave
``tokens`` unset, meaning "until training stops".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from curation.tokens.layout import TokenManifest


@dataclass
class Phase:
    """One curriculum phase: which groups to draw from, in which token proportions, for how long."""

    name: str
    """Label reported with every batch drawn in this phase (e.g. FOUNDATION, REASONING)."""
    weights: dict[str, float]
    """Group name -> positive weight; normalised to sum to 1, so {web: 3, books: 1} is 75/25."""
    tokens: int | None = None
    """Global tokens drawn in this phase before the next begins; None only for the last phase."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("phase: name is empty; give every phase a name")
        if not self.weights:
            raise ValueError(f"phase {self.name!r}: weights is empty; give at least one "
                             "group, e.g. weights: {web: 1.0}")
        for group, w in self.weights.items():
            if not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
                raise ValueError(f"phase {self.name!r}: weight of group {group!r} is {w!r}; "
                                 "weights must be positive numbers (leave a group out instead "
                                 "of giving it 0)")
        if self.tokens is not None and (isinstance(self.tokens, bool) or
                                        not isinstance(self.tokens, int) or self.tokens <= 0):
            raise ValueError(f"phase {self.name!r}: tokens is {self.tokens!r}; give a positive "
                             "integer budget, or leave it unset on the last phase")
        total = float(sum(self.weights.values()))
        self.weights = {g: float(w) / total for g, w in self.weights.items()}


@dataclass
class Mixture:
    """A sequence of phases drawn in order, and the seed of every document permutation."""

    phases: list[Phase]
    """The phases in training order; every phase but the last needs a token budget."""
    seed: int = 0
    """Seeds the per-group, per-epoch document permutations."""
    groups: list[str] = field(init=False)
    """Every group some phase draws from, sorted."""

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("mixture: no phases; give at least one phase")
        self.phases = [p if isinstance(p, Phase) else Phase(**p) for p in self.phases]
        for p in self.phases[:-1]:
            if p.tokens is None:
                raise ValueError(f"mixture: phase {p.name!r} has no token budget but is not the "
                                 "last phase; only the last phase may run unlimited")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"mixture: phase names repeat ({', '.join(names)}); name each "
                             "phase once")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"mixture: seed is {self.seed!r}; give a non-negative integer")
        self.groups = sorted({g for p in self.phases for g in p.weights})

    @property
    def total_tokens(self) -> int | None:
        """Sum of the phase budgets, or None when the last phase is unlimited."""
        if self.phases[-1].tokens is None:
            return None
        return sum(p.tokens for p in self.phases)

    def check_groups(self, available: Mapping[str, int], where: str = "token manifest") -> None:
        """Raises if a phase names a group missing from ``available`` (group -> tokens) or one
        with no tokens."""
        for p in self.phases:
            for g in p.weights:
                if g not in available:
                    raise ValueError(f"mixture phase {p.name!r}: group {g!r} is not in the "
                                     f"{where} (groups: {', '.join(sorted(available)) or 'none'})"
                                     "; fix the name or tokenize that group")
                if available[g] <= 0:
                    raise ValueError(f"mixture phase {p.name!r}: group {g!r} has no tokens in "
                                     f"the {where}; drop it from the phase")

    @classmethod
    def natural(cls, manifest: TokenManifest, seed: int = 0) -> Mixture:
        """One unlimited phase weighting every non-empty group by its token count."""
        weights = {g: float(info.tokens) for g, info in manifest.groups.items() if info.tokens > 0}
        if not weights:
            raise ValueError(f"{manifest.root}: the token manifest has no tokens in any group")
        return cls(phases=[Phase(name="natural", weights=weights, tokens=None)], seed=seed)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Mixture:
        """Builds a mixture from ``{"seed": ..., "phases": [{name, tokens, weights}, ...]}``."""
        if not isinstance(data, Mapping) or "phases" not in data:
            raise ValueError("mixture: expected a mapping with a 'phases' list (and optionally "
                             f"'seed'), got {type(data).__name__}")
        unknown = set(data) - {"seed", "phases"}
        if unknown:
            raise ValueError(f"mixture: unknown keys {sorted(unknown)}; allowed: seed, phases")
        phases = []
        for i, p in enumerate(data["phases"] or []):
            if not isinstance(p, Mapping):
                raise ValueError(f"mixture: phase #{i} is {p!r}, expected a mapping with name, "
                                 "tokens and weights")
            extra = set(p) - {"name", "weights", "tokens"}
            if extra:
                raise ValueError(f"mixture: phase #{i} has unknown keys {sorted(extra)}; "
                                 "allowed: name, weights, tokens")
            tokens = p.get("tokens")
            if isinstance(tokens, float) and tokens.is_integer():  # YAML reads 2e6 as a float
                tokens = int(tokens)
            phases.append(Phase(name=str(p.get("name", "")), weights=dict(p.get("weights") or {}),
                                tokens=tokens))
        return cls(phases=phases, seed=data.get("seed", 0))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Mixture:
        """Reads a mixture YAML file (see the module docstring)."""
        path = Path(path)
        try:
            return cls.from_dict(yaml.safe_load(path.read_text()))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
