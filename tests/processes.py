"""Subprocesses that start their own Ray: isolated under a RAY_TMPDIR, and killed for good."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import psutil


def processes_of(ray_tmpdir: str) -> list[psutil.Process]:
    """The processes started under `ray_tmpdir`: the job, its raylets and Ray workers."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get("RAY_TMPDIR") == ray_tmpdir:
                found.append(proc)
    return found


def kill_all(job: subprocess.Popen[bytes], ray_tmpdir: str) -> None:
    """SIGKILLs the job's session (it must lead one) and everything under `ray_tmpdir`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    for proc in processes_of(ray_tmpdir):
        with contextlib.suppress(psutil.Error):
            proc.kill()
