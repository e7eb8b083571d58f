"""One way to run independent jobs in worker processes: training grids, the trend task's runs, Optuna workers.

:func:`run_jobs` calls ``fn(shared, job)`` for every job, in ``n_jobs`` worker processes or (``n_jobs`` 1) in
this one, and returns the results in the order of the jobs. ``shared`` (features, data, settings) is sent to each
worker once, when it starts, not with every job. A job's exception is re-raised in the caller. ``fn`` must be a
module-level function (it is pickled by reference), and ``shared["inline"]`` tells it whether it runs in the
calling process (progress bars there) or in a worker (quiet).

The workers are forked from a fork server (Python's ``forkserver`` start method) that has imported torch, the
training code and what a head's first epoch imports (:data:`PRELOAD`): a spawned worker spends ~5-7 s importing
them before its first job, every pool again. :func:`prestart` starts that server early, so it imports while the
stage loads its features. Where the platform has no fork server (or ``MSA_START_METHOD=spawn``), workers are
spawned as before; either way a worker starts with a fresh interpreter state of its own and the same results.

See docs/design.md, "Worker processes".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

#: what the fork server imports once for all the workers forked from it (see the module's docstring)
PRELOAD = ("msa._worker_preload",)
#: the environment variable that picks the start method of the workers: ``forkserver`` (default) or ``spawn``
START_METHOD_ENV = "MSA_START_METHOD"

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


def context():
    """The multiprocessing context of the workers: the fork server (with :data:`PRELOAD`) where the platform has
    one, unless ``MSA_START_METHOD=spawn``; else spawn."""
    import multiprocessing

    method = os.environ.get(START_METHOD_ENV) or "forkserver"
    if method not in ("forkserver", "spawn"):
        from msa.cli import UserError

        raise UserError(f"the environment variable {START_METHOD_ENV} must be forkserver or spawn, got {method!r}")
    if method == "forkserver" and "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))
        return ctx
    return multiprocessing.get_context("spawn")


def prestart(n_jobs: int = 2) -> None:
    """Start the fork server now (when ``n_jobs`` > 1 and workers are forked), so that it imports :data:`PRELOAD`
    while this process does other work; the first pool then starts its workers at once."""
    ctx = context()
    if n_jobs > 1 and ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_threads(n_jobs: int) -> int:
    """Torch threads per worker: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // max(1, n_jobs))


def run_jobs(fn: Callable[[dict, Any], Any], jobs: Sequence, shared: dict | None = None, *, n_jobs: int = 1,
             threads: int | None = None, inline_threads: int | None = None, desc: str | None = "runs",
             unit: str = "run", cost: Sequence[float] | None = None) -> list:
    """``[fn(shared, job) for job in jobs]``, in up to ``n_jobs`` processes.

    ``threads``: torch threads per worker process (default: the cores shared out); ``inline_threads``: torch
    threads while the jobs run in this process (``None`` leaves it as it is; it is restored afterwards).
    ``desc``: the progress bar's title (``None``: no bar). ``cost``: each job's expected time (any unit); the
    workers then take the dearest jobs first (longest processing time first), so that the pool does not end with
    one long job on one worker while the others idle. The results are in the order of ``jobs`` either way."""
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
            threads = worker_threads(n_jobs) if threads is None else threads
            with ProcessPoolExecutor(n_jobs, mp_context=context(), initializer=_init,
                                     initargs=(shared, threads)) as pool:
                order = range(len(jobs)) if cost is None else sorted(range(len(jobs)), key=lambda i: -cost[i])
                futures = {pool.submit(partial(_call, fn), jobs[i]): i for i in order}
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
