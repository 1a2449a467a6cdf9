"""Ends an embedded local Ray's processes when the job's driver ends, however it ends.

``ray.shutdown()`` stops the local Ray a job started when the driver exits normally or on an
exception, and Ray's own reaper stops its GCS and raylet when a driver is SIGKILLed. But the
worker processes (an actor's, a running task's) are then orphaned and were seen to outlive the
killed driver by more than 30 s, holding memory and CPUs. So a job that starts a local Ray also
starts this small watcher (``start``, just before ``ray.init``) in its own session: while the
driver lives it notes the driver's new descendants every ``POLL_S``; once the driver is gone it terminates those still running
(SIGKILL after ``TERM_GRACE_S``) and exits. A process is identified by pid and start time, so a
recycled pid is never touched. It imports only the standard library and psutil, and runs as a
script, so it starts fast and never imports the package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 0.5
TERM_GRACE_S = 3.0


def start() -> subprocess.Popen:
    """Watch this process: when it ends, end the processes it starts from now on (its new descendants)."""
    import psutil

    me = psutil.Process()
    # What the driver runs before Ray starts is not Ray's, and not ours to end.
    before = ",".join(str(c.pid) for c in me.children(recursive=True))
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), str(me.pid), repr(me.create_time()), before],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def _watch(pid: int, create_time: float, before: set[int]) -> dict:
    """Follow the driver's descendants until it ends; the last ones seen, by pid."""
    import psutil

    known: dict = {}
    while True:
        try:
            driver = psutil.Process(pid)
            if abs(driver.create_time() - create_time) > 1e-3:  # the pid was recycled: the driver is gone
                return known
            for child in driver.children(recursive=True):
                if child.pid != os.getpid() and child.pid not in before:
                    known.setdefault(child.pid, child)
        except psutil.Error:
            return known
        time.sleep(POLL_S)


def reap(processes) -> int:
    """Terminate ``processes`` still running (SIGKILL after ``TERM_GRACE_S``); how many were."""
    import psutil

    running = [p for p in processes if p.is_running()]  # is_running also checks the start time
    for process in running:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(running, timeout=TERM_GRACE_S)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    return len(running)


def main(argv: list[str]) -> int:
    before = {int(p) for p in argv[2].split(",") if p} if len(argv) > 2 else set()
    reap(_watch(int(argv[0]), float(argv[1]), before).values())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
