"""One way to run independent jobs in worker processes: training grids, the trend task's runs, Optuna workers.

:func:`run_jobs` calls ``fn(shared, job)`` for every job, in ``n_jobs`` spawned processes or (``n_jobs`` 1) in
this one, and returns the results in the order of the jobs. ``shared`` (features, data, settings) is sent to each
worker once, when it starts, not with every job. A job's exception is re-raised in the caller. ``fn`` must be a
module-level function (it is pickled by reference), and ``shared["inline"]`` tells it whether it runs in the
calling process (progress bars there) or in a worker (quiet).

See docs/design.md, "Worker processes".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

#: the shared state of this process's jobs (set by the pool's initializer, or by run_jobs when inline)
_SHARED: dict = {}


def _init(shared: dict, threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    logging.getLogger("msa").setLevel(logging.WARNING)
    _SHARED.clear()
    _SHARED.update(shared, inline=False)


def _call(fn: Callable[[dict, Any], Any], job):
    return fn(_SHARED, job)


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_threads(n_jobs: int) -> int:
    """Torch threads per worker: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // max(1, n_jobs))


def run_jobs(fn: Callable[[dict, Any], Any], jobs: Sequence, shared: dict | None = None, *, n_jobs: int = 1,
             threads: int | None = None, inline_threads: int | None = None, desc: str | None = "runs",
             unit: str = "run") -> list:
    """``[fn(shared, job) for job in jobs]``, in up to ``n_jobs`` processes.

    ``threads``: torch threads per worker process (default: the cores shared out); ``inline_threads``: torch
    threads while the jobs run in this process (``None`` leaves it as it is; it is restored afterwards).
    ``desc``: the progress bar's title (``None``: no bar)."""
    from tqdm import tqdm

    shared = dict(shared or {})
    n_jobs = max(1, min(int(n_jobs), len(jobs)))
    results: list = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=None if desc else True)
    try:
        if n_jobs == 1:
            _run_inline(fn, jobs, shared, inline_threads, results, bar)
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from functools import partial
            from multiprocessing import get_context

            threads = worker_threads(n_jobs) if threads is None else threads
            with ProcessPoolExecutor(n_jobs, mp_context=get_context("spawn"), initializer=_init,
                                     initargs=(shared, threads)) as pool:
                futures = {pool.submit(partial(_call, fn), job): i for i, job in enumerate(jobs)}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update()
    finally:
        bar.close()
    return results


def _run_inline(fn, jobs, shared: dict, inline_threads: int | None, results: list, bar) -> None:
    import torch

    before = dict(_SHARED)
    threads = torch.get_num_threads()
    if inline_threads is not None:
        torch.set_num_threads(inline_threads)
    _SHARED.clear()
    _SHARED.update(shared, inline=True)
    try:
        for i, job in enumerate(jobs):
            results[i] = fn(_SHARED, job)
            bar.update()
    finally:
        torch.set_num_threads(threads)
        _SHARED.clear()
        _SHARED.update(before)
