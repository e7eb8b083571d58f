"""Run the whole pipeline as `make run` does and print each step's wall time and peak memory.

    python benchmarks/bench_pipeline.py --data-root ../shared/mvsa           # warm: what a rerun costs
    python benchmarks/bench_pipeline.py --data-root ../shared/mvsa --cold    # empty caches, every phase recomputed

The steps are exactly the commands of `make -n run DATA=...` (so the benchmark never drifts from the Makefile).
--cold adds FORCE=1 (every phase recomputes) and points $MSA_CACHE_DIR at a fresh temporary folder, so the feature,
embedding and caption caches start empty while your own cache/ is left alone. Either way the phases write their
usual results folders. Peak memory is the largest summed proportional set size (PSS) of the step's process tree
(the step and its worker processes; sampled once a second and at every new high of the RSS, which is sampled
every 0.2 s): the memory the step really occupies, each shared page
(torch's libraries, mapped by every worker) counted once. The largest summed resident set size (RSS), which counts
a shared page once per process, is printed next to it. The last line is
``total_s=<seconds> peak_mib=<PSS MiB> peak_rss_mib=<MiB>``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from msa import cli

REPO = Path(__file__).resolve().parents[1]


def steps(data_root: str, force: bool, extra: list[str]) -> list[list[str]]:
    """The python commands `make run` would run, in order."""
    cmd = ["make", "-n", "-s", "run", f"DATA={data_root}"] + (["FORCE=1"] if force else []) + extra
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
    py = ".venv/bin/python"
    return [shlex.split(line) for line in out.splitlines()
            if line.startswith(py + " ") and " -m pip " not in line and " -m venv " not in line]


def tree_memory(root) -> tuple[int, int]:
    """(summed PSS, summed RSS) in bytes of ``root`` and its descendants (PSS falls back to RSS where the
    system does not report it)."""
    import psutil

    pss = rss = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.AccessDenied:
            info = p.memory_info()
        except psutil.Error:  # the process ended meanwhile
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return pss, rss


#: the PSS of the tree is read when its RSS passes the RSS of the last reading by this much, and every
#: PSS_EVERY_S seconds; reading it walks the page tables (~50 ms for a 3 GiB process), so reading it at every poll
#: of a plateau (as before) cost the benchmark ~13% of a core and slowed the steps it measured
PSS_STEP = 32 * 2**20
PSS_EVERY_S = 5.0


class PeakProbe:
    """Peak RSS (every poll, cheap) and peak PSS of a step's process tree. The PSS is read at most once per
    :data:`PSS_STEP` of new RSS and every :data:`PSS_EVERY_S` seconds, so the peak PSS may be under-read by at
    most about :data:`PSS_STEP` (the tree's PSS cannot grow by more than its RSS between two readings, unless its
    sharing changes, which the periodic reading sees)."""

    def __init__(self):
        self.peak_pss = self.peak_rss = 0
        self.read_rss, self.read_at, self.reads = -PSS_STEP, -float("inf"), 0

    def due(self, rss: int, now: float) -> bool:
        """Whether the PSS should be read now (given the tree's RSS), and note the RSS."""
        self.peak_rss = max(self.peak_rss, rss)
        return rss > self.read_rss + PSS_STEP or now - self.read_at >= PSS_EVERY_S

    def read(self, pss: int, rss: int, now: float) -> None:
        self.peak_pss = max(self.peak_pss, pss)
        self.read_rss, self.read_at, self.reads = max(self.read_rss, rss), now, self.reads + 1


def run_step(argv: list[str], env: dict, log) -> tuple[float, float, float, int]:
    """(wall seconds, peak PSS MiB, peak RSS MiB, exit code) of one step."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    probe = PeakProbe()
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            if probe.due(rss, time.monotonic()):
                probe.read(tree_memory(root)[0], rss, time.monotonic())
        except psutil.Error:
            pass
        time.sleep(0.2)
    return time.perf_counter() - t0, probe.peak_pss / 2**20, probe.peak_rss / 2**20, proc.returncode


def main(argv=None) -> int:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--data-root", default="dataset/", help="the DATA of make run")
    p.add_argument("--cold", action="store_true", help="empty caches (temporary $MSA_CACHE_DIR) and FORCE=1")
    p.add_argument("--make-var", action="append", default=[], metavar="NAME=VALUE",
                   help="extra make variable, e.g. --make-var TRIALS=20 (repeatable)")
    p.add_argument("--log", type=Path, default=None, help="where the steps' output goes (default: a temp file)")
    p.add_argument("--output", type=Path, default=None, help="also write the timings as JSON here")
    args = p.parse_args(argv)
    if not (REPO / ".venv" / "bin" / "python").is_file():
        raise cli.UserError("no .venv: run `make setup` first (the benchmark times the pipeline, not the install)")
    todo = steps(args.data_root, args.cold, args.make_var)
    env = dict(os.environ)
    tmp = tempfile.TemporaryDirectory(prefix="msa-bench-cache-") if args.cold else None
    if tmp is not None:
        env["MSA_CACHE_DIR"] = tmp.name
    log_path = args.log or Path(tempfile.mkstemp(prefix="msa-bench-", suffix=".log")[1])
    rows = []
    print(f"{len(todo)} steps of `make run DATA={args.data_root}`{' (cold)' if args.cold else ''}; output -> "
          f"{log_path}", flush=True)
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            for argv_ in todo:
                name = " ".join(a for a in argv_[1:3] if not a.startswith("--"))
                log.write(f"\n$ {' '.join(argv_)}\n")
                log.flush()
                wall, peak, peak_rss, rc = run_step(argv_, env, log)
                rows.append({"step": name, "seconds": round(wall, 1), "peak_mib": round(peak),
                             "peak_rss_mib": round(peak_rss), "rc": rc})
                print(f"  {name:<34} {wall:8.1f} s {peak:8.0f} MiB PSS {peak_rss:8.0f} MiB RSS"
                      + (f"  FAILED (exit {rc})" if rc else ""), flush=True)
                if rc:
                    raise cli.UserError(f"step failed: {' '.join(argv_)} (see {log_path})")
    finally:
        if tmp is not None:
            tmp.cleanup()
    total = sum(r["seconds"] for r in rows)
    peak = max((r["peak_mib"] for r in rows), default=0)
    peak_rss = max((r["peak_rss_mib"] for r in rows), default=0)
    print("\n| step | wall s | peak MiB (PSS) | peak MiB (RSS) |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['seconds']:.1f} | {r['peak_mib']} | {r['peak_rss_mib']} |")
    print(f"| **total** | **{total:.1f}** | **{peak}** | **{peak_rss}** |")
    if args.output:
        args.output.write_text(json.dumps({"cold": args.cold, "data_root": args.data_root, "steps": rows,
                                           "total_s": total, "peak_mib": peak, "peak_rss_mib": peak_rss},
                                          indent=1))
    print(f"total_s={total:.1f} peak_mib={peak} peak_rss_mib={peak_rss}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
