"""One job per output: a lock on ``--out`` holding owner, host, pid and a heartbeat lease.

* Local outputs: ``fcntl.flock`` on a sibling file ``.<name>.lock`` (NFSv4 maps it to a POSIX
  lock shared by every client), removed on release. The kernel drops the lock when its process
  dies, however it dies; the JSON record in the file (owner, host, pid, heartbeat) names the
  holder in the refusal, and a record a dead holder left behind is logged as a takeover.
* S3 (boto3 installed): the object ``<out>/_LOCK``, created with ``If-None-Match: *`` (one
  creator wins), renewed and taken over with ``If-Match: <etag>`` (one taker wins). A lease not
  renewed for ``lease_s`` seconds has expired and is taken over, and the takeover is logged.
* Other object stores: the same lease object, written when absent and read back after a pause
  (a best-effort check: these stores' conditional writes are not reachable through pyarrow).

A holder renews its lease every ``lease_s / 3`` seconds from a daemon thread; ``check`` raises
``LockLostError`` when the lease was lost (e.g. a pause longer than the lease), and publishing
calls it right before its commit point, so a driver that lost its lock never publishes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import storage
from .errors import SettingError

logger = logging.getLogger(__name__)

LOCK_OBJECT = "_LOCK"
DEFAULT_LEASE_S = 60.0


class OutputLockedError(SettingError):
    """Another job holds the output's lock (its lease has not expired)."""


class LockLostError(RuntimeError):
    """This job's lock was taken over (its lease expired): it must not publish."""


@dataclass
class LockRecord:
    """What a lock says about its holder."""

    owner: str
    host: str
    pid: int
    token: str
    acquired: float
    heartbeat: float
    lease_s: float
    released: bool = False

    @classmethod
    def new(cls, lease_s: float) -> "LockRecord":
        now = time.time()
        user = os.environ.get("USER") or os.environ.get("USERNAME") or _user_name()
        return cls(user, socket.gethostname(), os.getpid(), uuid.uuid4().hex, now, now, lease_s)

    @classmethod
    def parse(cls, data: bytes) -> "LockRecord | None":
        try:
            fields = json.loads(data)
            return cls(**{k: fields[k] for k in cls.__dataclass_fields__ if k in fields})
        except (ValueError, TypeError, KeyError):
            return None

    def encode(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    def expired(self, now: float | None = None) -> bool:
        """Released, lease not renewed in time, or (same host) its process is gone."""
        if self.released or (now or time.time()) > self.heartbeat + self.lease_s:
            return True
        return self.host == socket.gethostname() and not _alive(self.pid)

    def describe(self) -> str:
        age = time.time() - self.heartbeat
        return (f"{self.owner} (pid {self.pid} on {self.host}, started "
                f"{time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime(self.acquired))}, "
                f"last heartbeat {age:.0f} s ago, lease {self.lease_s:g} s)")


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid with no passwd entry (containers)
        return f"uid {os.getuid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_location(out: str) -> str:
    """Where the lock of output ``out`` lives (a sibling file locally, an object under the prefix remotely)."""
    if storage.is_uri(out):
        return storage.join(out.rstrip("/"), LOCK_OBJECT)
    final = Path(out)
    return str(final.parent / f".{final.name}.lock")


class OutputLock:
    """The lock of one output; ``with OutputLock(out):`` holds it for the block (see module docstring)."""

    def __init__(self, out: str, lease_s: float = DEFAULT_LEASE_S) -> None:
        if lease_s <= 0:
            raise SettingError("the lock lease must be > 0 seconds", "lock_lease_s")
        self.out = out
        self.location = lock_location(out)
        self.record = LockRecord.new(lease_s)
        self._store = _store_for(self.location)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None
        self.took_over: LockRecord | None = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or take over an expired one (logged); ``OutputLockedError`` while another holds it."""
        previous = self._store.acquire(self.record)
        if previous is not None and not previous.released:
            self.took_over = previous
            why = ("its lease expired" if time.time() > previous.heartbeat + previous.lease_s
                   else "its process has ended")
            logger.warning("output %s: took over the lock of %s: %s without releasing it", self.out,
                           previous.describe(), why)
        self._thread = threading.Thread(target=self._heartbeat, name="epee-output-lock", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.record.lease_s / 3):
            self.record.heartbeat = time.time()
            try:
                if not self._store.renew(self.record):
                    self.lost = "another job took the lock over"
                    return
            except OSError as error:  # a transient store error: the next beat tries again
                logger.warning("output %s: lock heartbeat failed (%s)", self.out, type(error).__name__)

    def check(self) -> None:
        """``LockLostError`` when this job no longer holds the lock (called before publishing)."""
        if self.lost is None and not self._store.holds(self.record):
            self.lost = "the lock now names another holder"
        if self.lost is not None:
            raise LockLostError(f"output {self.out}: this job lost its lock ({self.lost}); nothing was published")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._store.release(self.record)


def _store_for(location: str) -> "_LocalLock | _S3Lock | _LeaseObject":
    if not storage.is_uri(location):
        return _LocalLock(location)
    if storage.scheme(location) == "s3":
        try:
            import boto3  # noqa: F401
        except ImportError:
            pass
        else:
            return _S3Lock(location)
    return _LeaseObject(location)


def _refuse(out_lock: str, holder: LockRecord | None) -> OutputLockedError:
    who = holder.describe() if holder else "another job (its lock record is being written)"
    return OutputLockedError(f"another job is writing this output: {who} holds its lock {out_lock}; wait for it "
                             "to finish, or for its lease to expire if it died", "out")


class _LocalLock:
    """``flock`` on a sibling file; the JSON record inside names the holder."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, record: LockRecord) -> LockRecord | None:
        import fcntl

        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                try:
                    holder = LockRecord.parse(Path(self.path).read_bytes())
                except OSError:
                    holder = None
                raise _refuse(self.path, holder) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder released (and unlinked) it between our open and flock: again
        previous = LockRecord.parse(os.pread(fd, 1 << 16, 0))
        self.fd = fd
        self._write(record)
        return previous

    def _write(self, record: LockRecord) -> None:
        data = record.encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def renew(self, record: LockRecord) -> bool:
        if self.fd is None:
            return False
        self._write(record)
        return True

    def holds(self, record: LockRecord) -> bool:
        return self.fd is not None

    def release(self, record: LockRecord) -> None:
        if self.fd is None:
            return
        record.released = True
        self._write(record)
        os.unlink(self.path)  # before the flock goes: a waiting opener sees the inode change and retries
        os.close(self.fd)
        self.fd = None


class _S3Lock:
    """S3 conditional writes: ``If-None-Match: *`` to create, ``If-Match: <etag>`` to renew or take over."""

    def __init__(self, location: str) -> None:
        import boto3

        self.bucket, self.key = location.split("://", 1)[1].split("/", 1)
        self.client = boto3.client("s3")
        self.etag: str | None = None

    @staticmethod
    def _precondition(error: Exception) -> bool:
        code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
        return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")

    def _read(self) -> tuple[LockRecord | None, str] | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None
        return LockRecord.parse(answer["Body"].read()), answer["ETag"]

    def acquire(self, record: LockRecord) -> LockRecord | None:
        from botocore.exceptions import ClientError

        for _ in range(5):  # a holder may release or renew between our calls: look again
            try:
                self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=record.encode(),
                                                   IfNoneMatch="*")["ETag"]
                return None
            except ClientError as error:
                if not self._precondition(error):
                    raise
            current = self._read()
            if current is None:
                continue
            holder, etag = current
            if holder is not None and not holder.expired():
                raise _refuse(f"s3://{self.bucket}/{self.key}", holder)
            try:
                self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=record.encode(),
                                                   IfMatch=etag)["ETag"]
                return holder
            except ClientError as error:
                if not self._precondition(error):
                    raise
        raise _refuse(f"s3://{self.bucket}/{self.key}", None)

    def renew(self, record: LockRecord) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=record.encode(),
                                               IfMatch=self.etag)["ETag"]
            return True
        except ClientError as error:
            if self._precondition(error) or error.response.get("Error", {}).get("Code") == "NoSuchKey":
                return False
            raise OSError(str(error)) from None

    def holds(self, record: LockRecord) -> bool:
        current = self._read()
        return current is not None and current[0] is not None and current[0].token == record.token

    def release(self, record: LockRecord) -> None:
        if self.holds(record):
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


class _LeaseObject:
    """A lease object through pyarrow: written when absent or expired, then read back (best effort)."""

    SETTLE_S = 1.0

    def __init__(self, location: str) -> None:
        self.fs, self.path = storage.resolve(location)

    def _read(self) -> LockRecord | None:
        try:
            with self.fs.open_input_stream(self.path) as handle:
                return LockRecord.parse(handle.read())
        except FileNotFoundError:
            return None

    def _write(self, record: LockRecord) -> None:
        with self.fs.open_output_stream(self.path) as handle:
            handle.write(record.encode())

    def acquire(self, record: LockRecord) -> LockRecord | None:
        holder = self._read()
        if holder is not None and not holder.expired():
            raise _refuse(self.path, holder)
        self._write(record)
        time.sleep(self.SETTLE_S)  # a rival that wrote at the same time: the last writer holds it
        if not self.holds(record):
            raise _refuse(self.path, self._read())
        return holder

    def renew(self, record: LockRecord) -> bool:
        if not self.holds(record):
            return False
        self._write(record)
        return True

    def holds(self, record: LockRecord) -> bool:
        current = self._read()
        return current is not None and current.token == record.token

    def release(self, record: LockRecord) -> None:
        if self.holds(record):
            self.fs.delete_file(self.path)
