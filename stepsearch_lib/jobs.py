"""Runs that go side by side: ``--jobs N`` starts N worker processes, each on cores / N torch threads, with its
output in a log of its own (`run_jobs`)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tqdm.auto import tqdm

from .cli import UsageError


def run_jobs(tasks: list[tuple[str, list[str]]], jobs: int, logs: Path) -> None:
    """Run ``tasks`` as separate processes, ``jobs`` at a time, each with ``cores // jobs`` torch threads and its
    output in ``logs/<label>.log``. On 2 cores two 1-thread runs do 1.11x the work of one 2-thread run
    (``bench/results/study_jobs.json``: generation is a per-token Python loop one core serves). Every task runs to
    its end; a failure is reported with its log's last lines once all have finished."""
    # the thread count is part of a run's numerics (sampling follows float rounding): it depends on ``jobs`` only,
    # so rerunning one seed of one arm with the study's ``jobs`` reproduces its per-update metrics
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(tasks), {}, []
    with tqdm(total=len(tasks), desc=f"study runs ({jobs} at a time, {threads} thread(s) each)") as bar:
        try:
            _drive(pending, running, failed, jobs, env, logs, bar)
        finally:  # interrupted: stop the workers too (each resumes from its last checkpoint next time)
            for proc, log in running.values():
                proc.terminate()
                log.close()
    if failed:
        raise UsageError("study runs failed:\n" + "\n".join(failed))


def _drive(pending, running, failed, jobs, env, logs, bar) -> None:
    """`run_jobs`'s loop: keep ``jobs`` workers busy, collect each one's exit."""
    while pending or running:
        while pending and len(running) < jobs:
            label, argv = pending.pop(0)
            log = open(logs / f"{label}.log", "w", encoding="utf-8")
            running[label] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env), log)
            bar.write(f"started {label} (log: {logs / f'{label}.log'})")
        for label, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[label]
                bar.update(1)
                if proc.returncode:
                    tail = (logs / f"{label}.log").read_text(encoding="utf-8", errors="replace")[-1500:]
                    failed.append(f"{label} (exit {proc.returncode}; log {logs / f'{label}.log'}):\n{tail}")
        time.sleep(1.0)
