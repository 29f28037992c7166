"""Loss-spike and NaN detection: a z-score of the step's loss over a trailing window."""

from __future__ import annotations

import math
from collections import deque

from engine.config import GuardConfig


class SpikeGuard:
    """Decides, per step, whether the loss is fine, a spike or not finite."""

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self.history: deque[float] = deque(maxlen=config.window)
        self.consecutive = 0

    def check(self, loss: float) -> str | None:
        """None when the step may proceed; otherwise the reason (``nan`` or ``spike z=...``).
        Accepted losses enter the history; guarded ones do not."""
        if self.config.action == "off":
            return None
        reason = None
        if not math.isfinite(loss):
            reason = "nan"
        elif len(self.history) >= self.config.min_history:
            n = len(self.history)
            mean = sum(self.history) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / max(n - 1, 1))
            z = (loss - mean) / max(std, 1e-8)
            if z > self.config.z_threshold:
                reason = f"spike z={z:.1f}"
        if reason is None:
            self.history.append(loss)
            self.consecutive = 0
        else:
            self.consecutive += 1
            if self.consecutive > self.config.max_consecutive:
                raise RuntimeError(f"{self.consecutive} guarded steps in a row (last: {reason}); "
                                   "the run is diverging: lower optim.lr or check the data")
        return reason

    def state_dict(self) -> dict:
        """The loss window (for checkpoints)."""
        return {"history": list(self.history), "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`."""
        self.history = deque(state["history"], maxlen=self.config.window)
        self.consecutive = state["consecutive"]
