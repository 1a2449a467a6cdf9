"""The notes job on a two-node Ray cluster started with ``ray start`` on loopback (joined with --address).

The checkpoint lives only on the loopback S3 server (``s3_server`` fixture): every actor downloads it
from the URI itself, so no node relies on a path of the driver's.

Kept apart from test_pipelines_ray.py: starting two Ray nodes takes most of a minute on two cores.
Set EPEE_SKIP_CLUSTER_TEST=1 to skip it.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from epee_annotate.pipelines.schema import read_job_metadata
from epee_annotate.testing import tiny_model

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def text_checkpoint(s3_server, tmp_path_factory):
    """s3://models/text: a tiny checkpoint that exists on no node's disk."""
    path = tmp_path_factory.mktemp("text_ckpt")
    tiny_model("bert", path, labels=("neg", "pos", "other")).save_pretrained(path)
    s3_server.create_bucket(Bucket="models")
    for file in path.iterdir():
        s3_server.upload_file(str(file), "models", f"text/{file.name}")
    shutil.rmtree(path)
    return "s3://models/text"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_node(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    ray_cli = Path(sys.executable).with_name("ray")
    ports = ["--dashboard-agent-listen-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port()),
             "--metrics-export-port", str(_free_port())]
    return subprocess.Popen([str(ray_cli), "start", "--block", "--disable-usage-stats", "--num-cpus", "3",
                             *ports, *args], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    pytest.skip(f"could not start a Ray node on this machine: {log.read_text()[-500:]}")


CLUSTER_DRIVER = """
import json, sys, ray
from epee_annotate.cli import main
code = main(sys.argv[2:])
ray.init(address=sys.argv[1], log_to_driver=False)
nodes = {a["Address"]["NodeID"] for a in ray._private.state.actors().values()
         if "NoteAnnotator" in a.get("ActorClassName", "")}
alive = sum(n["Alive"] for n in ray.nodes())
print(json.dumps({"code": code, "actor_nodes": len(nodes), "alive_nodes": alive}))
"""


def test_job_joins_a_two_node_cluster(text_checkpoint, tmp_path):
    """Head + second node started with ``ray start`` on loopback; the job joins with --address."""
    if os.environ.get("EPEE_SKIP_CLUSTER_TEST"):
        pytest.skip("EPEE_SKIP_CLUSTER_TEST is set")
    # Token auth needs the cluster's token in every process; a throw-away loopback cluster does without.
    # os.environ carries the AWS_* settings of the S3 server to both nodes and the driver.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # A short session directory: Ray's unix socket paths must stay under 108 bytes.
    session_dir = tempfile.mkdtemp(prefix="epee-ray-")
    head = _ray_node(["--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard",
                      "false", "--temp-dir", session_dir], tmp_path / "head.log", env)
    nodes = [head]
    try:
        _wait_for(tmp_path / "head.log", "Ray runtime started", head)
        worker = _ray_node(["--address", address, "--node-ip-address", "127.0.0.1"], tmp_path / "worker.log", env)
        nodes.append(worker)
        _wait_for(tmp_path / "worker.log", "Ray runtime started", worker)
        source = tmp_path / "notes.jsonl"
        source.write_text("".join(json.dumps({"id": i, "text": "rash after the first dose"}) + "\n"
                                  for i in range(16)))
        out = tmp_path / "out"
        driver = subprocess.run(
            [sys.executable, "-c", CLUSTER_DRIVER, address, "annotate-notes", str(source), "--checkpoint",
             str(text_checkpoint), "--out", str(out), "--address", address, "--num-actors", "2",
             # 2 logical CPUs per actor on 3-CPU nodes: the two actors cannot share a node, and each
             # node keeps one CPU for Ray Data's read tasks.
             "--cpus-per-actor", "2", "--batch-size", "2", "--no-progress"],
            env=env, capture_output=True, text=True, timeout=240,
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        result = json.loads(driver.stdout.strip().splitlines()[-1])
        assert result["code"] == 0 and result["alive_nodes"] == 2
        assert result["actor_nodes"] == 2  # one actor per node: the job really ran on both
        table = pads.dataset(str(out / "annotations"), format="parquet").to_table()
        assert sorted(table.column("doc_id").to_pylist(), key=int) == [str(i) for i in range(16)]
        # Every row was classified by an actor holding the model it fetched from the URI.
        assert set(table.column("status").to_pylist()) == {"ok"} and None not in table.column("label").to_pylist()
        assert read_job_metadata(out / "annotations")["pipeline"]["checkpoint"] == text_checkpoint
    finally:
        for process in reversed(nodes):
            process.terminate()  # --block nodes drain and stop their own processes on SIGTERM
        for process in reversed(nodes):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(session_dir, ignore_errors=True)
