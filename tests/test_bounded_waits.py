"""Every wait is bounded: free resources on a shared Ray cluster, object-store calls; unsupported and Azure URIs."""

import json
import os
import socket
import time

import pytest

from epee_annotate import filesystem
from epee_annotate.cli import main
from epee_annotate.pipelines.errors import WaitTimeoutError
from epee_annotate.pipelines.runtime import ActorSettings, wait_for_free_resources


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on leaving: nothing listens there


def test_resource_wait_returns_once_the_cluster_frees_up():
    frees = iter([{"CPU": 0.0}, {"CPU": 1.0}, {"CPU": 2.0}])
    assert wait_for_free_resources(ActorSettings(), lambda: next(frees), timeout_s=30, poll_s=0) >= 0


def test_resource_wait_is_bounded_and_names_its_setting():
    with pytest.raises(WaitTimeoutError) as caught:
        wait_for_free_resources(ActorSettings(num_actors=2, gpus_per_actor=1), lambda: {"CPU": 8.0, "GPU": 1.0},
                                timeout_s=0.05, poll_s=0.01)
    assert "3 CPUs and 2 GPUs free" in str(caught.value) and "1 GPUs became free" in str(caught.value)
    assert caught.value.settings == ("actor_start_timeout_s",)


def _slow_annotator():
    """A note annotator whose start (model loading) takes longer than any bound the test sets."""
    from epee_annotate.pipelines.notes import NoteAnnotator

    class SlowStart(NoteAnnotator):
        def __init__(self, *args, **kwargs):
            import time

            time.sleep(15)
            super().__init__(*args, **kwargs)

    return SlowStart


@pytest.mark.ray
def test_shared_cluster_waits_end_within_the_actor_start_bound(model_factory, tmp_path, capsys):
    """A 2-CPU Ray whose one CPU another job's actor holds: the pool fits the cluster but never the free
    CPUs. Then, with the CPUs free, actors that do not start in time. Both end with the bound's message."""
    ray = pytest.importorskip("ray")
    from epee_annotate.pipelines.jobs import JobOptions, NotesJob, run_notes_job
    from epee_annotate.pipelines.notes import PipelineSource

    model_factory("bert").save_pretrained(tmp_path / "ckpt")
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"id": i, "text": "rash"}) + "\n" for i in range(4)))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        holder = ray.remote(num_cpus=1)(type("OtherJob", (), {"ping": lambda self: 1})).remote()
        ray.get(holder.ping.remote())
        code = main(["annotate-notes", str(tmp_path / "notes.jsonl"), "--checkpoint", str(tmp_path / "ckpt"),
                     "--out", str(tmp_path / "out"), "--actor-start-timeout", "2", "--no-progress"])
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and "waited 2 s for 2 CPUs free on the Ray cluster" in error
        assert error.endswith("(see --actor-start-timeout)") and not (tmp_path / "out").exists()
        ray.kill(holder)
        job = NotesJob([str(tmp_path / "notes.jsonl")], PipelineSource(checkpoint=str(tmp_path / "ckpt")),
                       JobOptions(out=str(tmp_path / "out"), actor_start_timeout_s=3, progress=False),
                       annotator=_slow_annotator())
        with pytest.raises(WaitTimeoutError, match="did not start within 3 s") as caught:
            run_notes_job(job)
        assert caught.value.settings == ("actor_start_timeout_s",)
    finally:
        ray.shutdown()


def test_unreachable_gcs_endpoint_ends_with_the_storage_bound(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.delenv(filesystem.TIMEOUT_VARIABLE, raising=False)
    (tmp_path / "ckpt").mkdir()
    code = main(["annotate-notes", "gs://bucket/notes.jsonl", "--checkpoint", str(tmp_path / "ckpt"), "--out",
                 str(tmp_path / "out"), "--storage-timeout", "1"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "no answer from the object store for gs://bucket/notes.jsonl within the storage timeout of 1 s" in error
    assert error.endswith("(see --storage-timeout)")


def test_s3_calls_carry_the_storage_timeout(monkeypatch):
    monkeypatch.setenv(filesystem.TIMEOUT_VARIABLE, "7")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    fs, path = filesystem.resolve("s3://bucket/key")
    options = fs.__reduce__()[1][0]
    assert path == "bucket/key" and options["connect_timeout"] == 7 and options["request_timeout"] == 7
    with pytest.raises(filesystem.StorageTimeoutError, match="s3://bucket/key within the storage timeout of 7 s"):
        filesystem.exists("s3://bucket/key")


def test_unsupported_scheme_is_one_line_listing_the_supported_ones(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    code = main(["annotate-notes", "ftp://host/notes.jsonl", "--checkpoint", str(tmp_path / "ckpt"), "--out",
                 str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.splitlines() == [error]
    assert "ftp:// is not a supported location" in error and "s3://, gs://" in error and "abfs://" in error


def test_abfs_reads_the_account_and_credentials_adlfs_documents(monkeypatch):
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME", raising=False)
    with pytest.raises(ValueError, match="AZURE_STORAGE_ACCOUNT_NAME"):
        filesystem.resolve("abfs://container/notes")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "clinic")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")
    fs, path = filesystem.resolve("abfs://container/notes/a.jsonl")
    assert type(fs).__name__ == "AzureFileSystem" and path == "container/notes/a.jsonl"
    assert fs.__reduce__()[1][0]["account_name"] == "clinic"  # the account from the environment, not a default
    fs, _ = filesystem.resolve("abfs://container@other.dfs.core.windows.net/notes")
    assert fs.__reduce__()[1][0]["account_name"] == "other"  # the URI's account wins, as in adlfs
    # An emulator's connection string (Azurite): its endpoint, and one error naming the location.
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_KEY")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "DefaultEndpointsProtocol=http;AccountName=clinic;"
                       f"AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:{_closed_port()}/clinic;")
    with pytest.raises(OSError, match="no answer from the object store for abfs://container/x"):
        filesystem.exists("abfs://container/x")


REAPER_DRIVER = """
import sys, time
from epee_annotate.pipelines.runtime import ActorSettings, ray_session
with ray_session(None, ActorSettings(num_actors=1)):
    import ray

    @ray.remote(num_cpus=0)
    class Busy:  # a live actor and a running task, as in a job
        def wait(self):
            time.sleep(600)

    actor = Busy.remote()
    running = actor.wait.remote()
    time.sleep(3)
    print(ray._private.worker._global_node.get_session_dir_path(), flush=True)
    time.sleep(600)
"""


@pytest.mark.ray
def test_a_killed_drivers_local_ray_ends_with_it():
    """SIGKILL runs no cleanup in the driver: the local Ray it started (GCS, raylet, agents, and the workers of a
    live actor and a running task, which Ray's own reaper leaves orphaned) ends within seconds (``reaper``)."""
    import select
    import signal
    import subprocess
    import sys

    import psutil

    env = {**os.environ}  # the caller's RAY_TMPDIR: Ray's socket paths must stay short
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([sys.executable, "-c", REAPER_DRIVER], stdout=subprocess.PIPE, text=True, env=env,
                              start_new_session=True)
    try:
        assert select.select([driver.stdout], [], [], 120)[0], "the driver did not start Ray within 120 s"
        assert driver.stdout.readline().strip()
        started = [p for p in psutil.Process(driver.pid).children(recursive=True)
                   if "pipelines/reaper.py" not in " ".join(p.cmdline())]
        assert any("raylet" in " ".join(p.cmdline()) for p in started) and len(started) >= 5
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 30

        def alive():
            return [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

        while alive():
            assert time.monotonic() < deadline, f"{len(alive())} Ray process(es) outlived the driver by 30 s"
            time.sleep(0.5)
    finally:
        if driver.poll() is None:
            driver.kill()
