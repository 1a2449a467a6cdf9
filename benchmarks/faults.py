"""Fault injection for the notes job: rows expected / written / lost / duplicated, one line per scenario.

Every scenario runs the real command line (``annotate-notes`` on a tiny random checkpoint,
``--scope doc``: exactly one row per note) as driver subprocesses, each with its own embedded
Ray, and kills them with SIGKILL where the scenario says so:

* ``concurrent drivers``: two ``--resume`` drivers started together on one ``--out``;
* ``kill during write``: SIGKILL once Ray committed a checkpointed part, then ``--resume``;
* ``kill during publish``: S3 output (a moto server on 127.0.0.1); the driver is SIGKILLed after
  copying half of the published files; then the same command again (no extra flag);
* ``stale lock``: S3 output whose ``_LOCK`` names a dead driver on another host (lease expired);
* ``resume, changed settings``: SIGKILL during a ``--resume`` run, resume with another policy
  (must be refused, naming it), then resume with the original settings.

For each it reads the published dataset the documented way (``read_published``), runs
``verify``, and after every SIGKILL lists the processes of the killed driver's session that
outlived it and for how long (the Ray processes it started). Nothing here edits tracked files.

    python -m benchmarks.faults [--notes 96] [--work /tmp/epee_faults]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

DRIVER = """
import os, signal, sys
from epee_annotate.cli import main
if os.environ.get("FAULTS_KILL_IN_PUBLISH"):  # fault injection: die (SIGKILL) halfway through the publish copy
    import json
    from epee_annotate.pipelines import publish

    def dying_copy(fs, out_path, root_path):
        with fs.open_input_stream(f"{root_path}/{publish.MARKER}") as handle:
            wanted = sorted(publish._manifest_paths(json.loads(handle.read())))
        for relative in wanted[: max(1, len(wanted) // 2)]:
            fs.create_dir(f"{out_path}/{relative}".rsplit("/", 1)[0], recursive=True)
            fs.copy_file(f"{root_path}/{relative}", f"{out_path}/{relative}")
        os.kill(os.getpid(), signal.SIGKILL)

    publish._copy_published = dying_copy
sys.exit(main(sys.argv[1:]))
"""


def _leftover_processes(sid: int, ray_dir: str) -> list[str]:
    """``pid command`` of live processes in session ``sid`` or started for Ray temp dir ``ray_dir``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and (int(fields[3]) == sid or ray_dir in command):
            found.append(f"{entry} {command[:60]}")
    return found


class Driver:
    """One ``epee-annotate`` driver process in its own session (so what it started can be found)."""

    count = 0

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        Driver.count += 1
        self.ray_dir = f"/tmp/rfault{os.getpid()}_{Driver.count}"  # its own Ray temp dir: short (socket paths)
        self.log = log
        self.handle = open(log, "w")
        self.process = subprocess.Popen([sys.executable, "-c", DRIVER, *args], env={**env, "RAY_TMPDIR": self.ray_dir},
                                        stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=ROOT)

    def wait(self, timeout: float = 600) -> int:
        code = self.process.wait(timeout=timeout)
        self.handle.close()
        return code

    def kill_when(self, ready: Callable[[], bool], timeout: float = 300) -> str:
        """SIGKILL once ``ready()``; returns how long what it started outlived it (``leftovers``)."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"the driver ended before the fault point:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError("the fault point was not reached in time")
            time.sleep(0.05)
        os.kill(self.process.pid, signal.SIGKILL)
        self.wait(30)
        return self.leftovers()

    def leftovers(self, limit_s: float = 180) -> str:
        """How long the processes the (ended) driver started outlive it (polled each second, up to ``limit_s``)."""
        started = time.monotonic()
        while (left := _leftover_processes(self.process.pid, self.ray_dir)) and time.monotonic() - started < limit_s:
            time.sleep(1)
        waited = time.monotonic() - started
        if left:
            return f"{len(left)} of its processes still alive after {waited:.0f} s: {', '.join(left)[:200]}"
        return f"its processes all ended within {waited:.0f} s"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _count(out: str, expected: int) -> dict[str, object]:
    from epee_annotate.pipelines.publish import read_published, verify_output

    ids = read_published(out, columns=["doc_id"]).column("doc_id").to_pylist()
    counts = Counter(ids)
    wanted = {f"n{i:05d}" for i in range(expected)}
    problems = verify_output(out)[1]
    return {"expected": expected, "written": len(ids), "lost": len(wanted - set(counts)),
            "duplicated": sum(c - 1 for c in counts.values() if c > 1) + len(set(counts) - wanted),
            "verify": "ok" if not problems else f"{len(problems)} problem(s)"}


def _committed_parts(checkpoint_dir: Path) -> Callable[[], bool]:
    """A predicate: Ray committed at least one checkpointed part under ``checkpoint_dir``."""
    def ready() -> bool:
        return checkpoint_dir.is_dir() and any(not p.name.endswith(".pending.parquet")
                                               for p in checkpoint_dir.rglob("*.parquet"))
    return ready


def _object_storage_scenarios(command: Callable[..., list[str]], env: dict[str, str],
                              log: Callable[[str], Path], notes: int) -> list[tuple[str, dict[str, object], str]]:
    """Kill during publish and a stale lock, on S3 (the environment points at the loopback server)."""
    import boto3

    from epee_annotate.pipelines.lock import LockRecord

    client = boto3.client("s3")
    client.create_bucket(Bucket="faults")
    results = []
    # SIGKILL halfway through the publish copy; the same command again finishes that publish.
    out = "s3://faults/killed_publish"
    driver = Driver(command(out), {**env, "FAULTS_KILL_IN_PUBLISH": "1"}, log("publish_killed"))
    code_killed = driver.wait()
    left = driver.leftovers()
    partial = client.list_objects_v2(Bucket="faults", Prefix="killed_publish/annotations/").get("Contents", [])
    rerun = Driver(command(out), env, log("publish_rerun"))
    code = rerun.wait()
    finished = "finished the interrupted publish" in rerun.output()
    results.append(("kill during publish (S3)", _count(out, notes),
                    f"killed: exit {code_killed} with {len(partial)} data file(s) copied, no _SUCCESS; "
                    f"rerun exit {code}, finished it: {finished}; killed driver: {left}"))
    # A lock left by a driver on another host that died (lease expired): taken over, logged.
    out = "s3://faults/stale_lock"
    stale = LockRecord("someone", "node-7", 4242, "dead", time.time() - 600, time.time() - 600, 60)
    client.put_object(Bucket="faults", Key="stale_lock/_LOCK", Body=stale.encode())
    run = Driver(command(out, "--resume"), env, log("stale_lock"))
    code = run.wait()
    logged = "took over the lock of someone (pid 4242 on node-7" in run.output()
    results.append(("stale lock (S3)", _count(out, notes), f"exit {code}, takeover logged: {logged}"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=96)
    parser.add_argument("--work", default="/tmp/epee_faults")
    args = parser.parse_args()

    from epee_annotate.testing import tiny_model

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    checkpoint = work / "ckpt"
    tiny_model("bert", checkpoint, labels=("neg", "pos", "other")).save_pretrained(checkpoint)
    notes = work / "in" / "notes.jsonl"
    notes.parent.mkdir()
    notes.write_text("".join(json.dumps({"id": f"n{i:05d}", "text": "rash after the first dose"}) + "\n"
                             for i in range(args.notes)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def command(out: str, *extra: str) -> list[str]:
        return ["annotate-notes", str(notes), "--checkpoint", str(checkpoint), "--scope", "doc", "--out", out,
                "--no-progress", "--batch-size", "4", "--rows-per-file", "4", *extra]

    def log(name: str) -> Path:
        return work / "logs" / f"{name}.log"

    results: list[tuple[str, dict[str, object], str]] = []

    # 1. Two drivers at once on one --out.
    out = str(work / "out_concurrent")
    drivers = [Driver(command(out, "--resume"), env, log(f"concurrent_{i}")) for i in range(2)]
    codes = sorted(d.wait() for d in drivers)
    refused = sum("another job is writing this output" in d.output() for d in drivers)
    results.append(("concurrent drivers", _count(out, args.notes), f"exit codes {codes}, {refused} refused at once"))

    # 2. SIGKILL during the write (after a committed part), then --resume.
    out = str(work / "out_killed_write")
    driver = Driver(command(out, "--resume"), env, log("write_killed"))
    left = driver.kill_when(_committed_parts(work / ".out_killed_write.resume" / "checkpoint"))
    code = Driver(command(out, "--resume"), env, log("write_resumed")).wait()
    results.append(("kill during write", _count(out, args.notes),
                    f"resume exit {code}; killed driver: {left}"))

    # 3. Resume with changed settings after a kill: refused, naming what differs; then the original settings.
    out = str(work / "out_changed")
    driver = Driver(command(out, "--resume", "--entropy", "0.2"), env, log("changed_killed"))
    left_changed = driver.kill_when(_committed_parts(work / ".out_changed.resume" / "checkpoint"))
    other = Driver(command(out, "--resume", "--entropy", "0.6"), env, log("changed_other"))
    other_code = other.wait()
    named = "policy" in other.output() and "resuming would mix two jobs" in other.output()
    code = Driver(command(out, "--resume", "--entropy", "0.2"), env, log("changed_same")).wait()
    results.append(("resume, changed settings", _count(out, args.notes),
                    f"changed: exit {other_code}, names the policy: {named}; same settings: exit {code}; "
                    f"killed driver: {left_changed}"))

    # 4 and 5 on object storage (a moto S3 server on the loopback interface).
    import logging

    from epee_annotate.testing import loopback_s3_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the loopback server's request log
    try:
        with loopback_s3_server() as s3_env:
            results += _object_storage_scenarios(command, {**env, **s3_env}, log, args.notes)
    finally:
        for index in range(1, Driver.count + 1):  # Ray's session folders of this benchmark's drivers
            shutil.rmtree(f"/tmp/rfault{os.getpid()}_{index}", ignore_errors=True)

    print(f"machine: {platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}), {args.notes} notes, "
          "tiny random BERT checkpoint, --scope doc (one row per note)")
    print(f"{'scenario':28s} {'expected':>8s} {'written':>8s} {'lost':>5s} {'dup':>5s} {'verify':>7s}  notes")
    for name, counts, note in results:
        print(f"{name:28s} {counts['expected']:>8} {counts['written']:>8} {counts['lost']:>5} "
              f"{counts['duplicated']:>5} {counts['verify']:>7}  {note}")
    bad = [name for name, counts, _ in results if counts["lost"] or counts["duplicated"] or counts["verify"] != "ok"]
    if bad:
        sys.exit(f"rows lost, duplicated or unverified in: {', '.join(bad)}")


if __name__ == "__main__":
    main()
