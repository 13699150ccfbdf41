"""Learning-rate schedules, stepped once per optimizer step.

Notation: ``t = s + 1`` where ``s`` is the number of optimizer steps already
taken (so the first update uses ``t = 1``), ``W`` = ``--warmup`` steps,
``lr`` = ``--learning_rate``. The rate of update ``t`` is ``lr * factor(t)``:

``constant``
    ``factor(t) = min(1, t / W)``: a linear warm-up from ``lr / W`` to ``lr``
    over the first ``W`` updates, then constant. ``W = 0``: always ``lr``.

``noam`` (Vaswani et al. 2017, section 5.3, normalised to peak at ``lr``)
    ``factor(t) = min(t / W, sqrt(W / t))``: the same linear warm-up, reaching
    ``lr`` at ``t = W``, then inverse square-root decay (``lr / 2`` at
    ``t = 4 W``). ``W = 0`` is taken as ``W = 1``: ``factor(t) = 1 / sqrt(t)``
    (the original code silently ignored the schedule when ``W = 0``).
"""

from __future__ import annotations

import math
from typing import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from relative_performer.errors import UserError

SCHEDULES = ("constant", "noam")


def lr_factor(schedule: str, warmup: int) -> Callable[[int], float]:
    """The factor of the base rate as a function of ``s``, the steps already taken."""
    if warmup < 0:
        raise UserError(f"--warmup must be >= 0 (got {warmup})")
    if schedule == "constant":
        if warmup == 0:
            return lambda s: 1.0
        return lambda s: min(1.0, (s + 1) / warmup)
    if schedule == "noam":
        w = max(warmup, 1)
        return lambda s: min((s + 1) / w, math.sqrt(w / (s + 1)))
    raise UserError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def make_scheduler(optimizer: Optimizer, schedule: str, warmup: int) -> LambdaLR:
    """A ``LambdaLR`` to be stepped after every optimizer step.

    The factor is a plain function, so the scheduler's ``state_dict`` holds only
    numbers (safe for ``torch.load(weights_only=True)``).
    """
    return LambdaLR(optimizer, lr_factor(schedule, warmup))
