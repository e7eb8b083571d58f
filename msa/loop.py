"""The one training loop: epochs with early stopping, shared by every model the project trains.

The classification heads (:func:`msa.trainer.fit`), the MMSA regressors (:func:`msa.seq_models.fit_regression`)
and the trend task's recurrent model (:func:`tasks.trend.model.train_one`) differ in what one epoch does, how it is
scored and what is kept of the best epoch; they share how epochs follow each other, when training stops and which
epoch wins. Each gives :func:`run_epochs` an adapter (a :class:`TaskAdapter`):

* ``run_epoch(epoch)`` trains one epoch and evaluates it: returns the epoch's history row and its score (higher is
  better: weighted F1; minus the validation MAE);
* ``keep(epoch, row, score)`` is told of each new best epoch (snapshot the weights, write the checkpoint);
* ``end_epoch(epoch, row, state)`` runs after every epoch (history file, resume state, progress bar).

An epoch is better when its score beats the best by more than ``tol``; training stops after ``patience`` epochs
without one (0: never). :class:`LoopState` is everything the loop carries between epochs, so that a resumed run
continues exactly (see :mod:`msa.trainer`'s resume state). See docs/design.md, "One training loop".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Where a training stands: the history so far, the best epoch and its score, epochs since a better one."""

    history: list[dict] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0
    stale: int = 0
    next_epoch: int = 1
    stopped: bool = False  # early stopping ended it (not the epoch budget)


class TaskAdapter(Protocol):
    def run_epoch(self, epoch: int) -> tuple[dict, float]: ...

    def keep(self, epoch: int, row: dict, score: float) -> None: ...

    def end_epoch(self, epoch: int, row: dict, state: LoopState) -> None: ...


def run_epochs(adapter: TaskAdapter, epochs: int, patience: int, *, tol: float = 1e-6,
               state: LoopState | None = None, on_epoch: Callable[[dict], None] | None = None) -> LoopState:
    """Epochs ``state.next_epoch .. epochs`` of ``adapter`` with early stopping; returns the final state."""
    state = state or LoopState()
    for epoch in range(state.next_epoch, epochs + 1):
        if patience and state.stale >= patience:  # a resumed run that had already stopped
            state.stopped = True
            break
        row, score = adapter.run_epoch(epoch)
        state.history.append(row)
        if score > state.best_score + tol:
            state.best_score, state.best_epoch, state.stale = score, epoch, 0
            adapter.keep(epoch, row, score)
        else:
            state.stale += 1
        state.next_epoch = epoch + 1
        adapter.end_epoch(epoch, row, state)
        if on_epoch is not None:
            on_epoch(row)
        if patience and state.stale >= patience:
            log.info("early stop at epoch %d (best %d)", epoch, state.best_epoch)
            state.stopped = True
            break
    return state


def snapshot(module) -> dict:
    """A copy of ``module``'s weights on the CPU (the best epoch's, restored when training ends)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
