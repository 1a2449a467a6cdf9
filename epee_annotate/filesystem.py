"""One filesystem API for local paths and object storage (``s3://``, ``gs://``, ``abfs://``, ``hdfs://`` ...).

Callers open, list and glob through these functions and never branch on the scheme. Filesystems
come from ``pyarrow.fs.FileSystem.from_uri`` (as Ray Data resolves them), so credentials and
endpoints are read from the usual environment (``AWS_*`` incl. ``AWS_ENDPOINT_URL``,
``GOOGLE_APPLICATION_CREDENTIALS`` and ``STORAGE_EMULATOR_HOST``, ``AZURE_STORAGE_*`` as adlfs
documents them, Hadoop's ``CLASSPATH``). Other schemes are refused (``UnsupportedLocationError``).

S3 and GCS calls are bounded: their connect and request timeouts (S3) and retry time limit (GCS)
are ``storage_timeout_s()`` (``EPEE_STORAGE_TIMEOUT_S``, default 60 s); a store that does not
answer within it ends in a ``StorageTimeoutError`` naming the location (``bounded``). pyarrow's
Azure and HDFS clients have no such setting: their own retry policies bound them.

Listing (``expand``): directories recursively, skipping names that start with ``.`` or ``_``;
globs with ``*``, ``?``, ``[...]`` and ``**``. Local entries that cannot be read (dangling
symlinks, loops) are listed, so callers can report them (``problem``), never skip them silently.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import posixpath
import re
import stat
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

if TYPE_CHECKING:
    import pyarrow.fs as pafs


def _pyarrow_fs():
    """``pyarrow.fs``, imported on first use: the command line builds its parser without pyarrow."""
    import pyarrow.fs

    return pyarrow.fs


def is_uri(location: str | os.PathLike) -> bool:
    """True for ``scheme://...`` locations other than ``file://``."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


# The one list of the URI schemes this package reads and writes (S3, GCS, Azure, HDFS; file:// is local).
SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "az", "hdfs", "viewfs", "file")
AZURE_SCHEMES = ("abfs", "abfss", "az")
TIMED_SCHEMES = ("s3", "gs", "gcs")  # the clients with a timeout setting (``_bounded_filesystem``)
TIMEOUT_VARIABLE = "EPEE_STORAGE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0
# What an object store's client says when it got no answer in time (S3 via curl, GCS's retry policy).
_NO_ANSWER = re.compile(r"NETWORK_CONNECTION|Retry policy exhausted|UNAVAILABLE|timed? ?out|curlCode: (?:6|7|28)\b|"
                        r"Couldn't connect|resolve host|Fail to get a new connection", re.IGNORECASE)


class UnsupportedLocationError(ValueError):
    """A URI whose scheme this package does not read or write."""


class StorageTimeoutError(TimeoutError):
    """An object store gave no answer within ``storage_timeout_s()``; ``settings`` names the setting."""

    settings = ("storage_timeout_s",)


def storage_timeout_s() -> float:
    """The bound of each S3 and GCS call, in seconds: ``EPEE_STORAGE_TIMEOUT_S`` or 60."""
    text = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_VARIABLE} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"{TIMEOUT_VARIABLE} must be > 0 seconds, got {text!r}")
    return value


@contextmanager
def bounded(location: str | os.PathLike) -> Iterator[None]:
    """An object store's no-answer error inside the block as one error naming ``location``.

    S3 and GCS calls are bounded by ``storage_timeout_s()`` (``StorageTimeoutError``); pyarrow's Azure
    and HDFS clients have no timeout setting, so their own retry policies bound them (a plain ``OSError``).
    """
    try:
        yield
    except OSError as error:
        if not is_uri(location) or isinstance(error, (StorageTimeoutError, FileNotFoundError)) \
                or not _NO_ANSWER.search(str(error)):
            raise
        reason = str(error).splitlines()[0][:200]
        if scheme(str(location)) in TIMED_SCHEMES:
            raise StorageTimeoutError(f"no answer from the object store for {location} within the storage timeout "
                                      f"of {storage_timeout_s():g} s ({reason})") from error
        raise OSError(f"no answer from the object store for {location} ({reason})") from error


def _scheme_name(text: str) -> str:
    name = text.split("://", 1)[0].lower()
    if name not in SCHEMES:
        listed = ", ".join(f"{s}://" for s in SCHEMES if s != "file")
        raise UnsupportedLocationError(f"{text.split('://', 1)[0]}:// is not a supported location; use a local path "
                                       f"or one of {listed}")
    return name


def _bounded_filesystem(fs: pafs.FileSystem) -> pafs.FileSystem:
    """``fs`` with the storage timeout on each call (S3 connect/request timeouts, the GCS retry time limit)."""
    import datetime

    pafs = _pyarrow_fs()
    timeout = storage_timeout_s()
    if isinstance(fs, pafs.S3FileSystem):
        options = fs.__reduce__()[1][0]
        return pafs.S3FileSystem(**{**options, "connect_timeout": timeout, "request_timeout": timeout,
                                    "proxy_options": options["proxy_options"] or None})
    if type(fs).__name__ == "GcsFileSystem":
        options = dict(fs.__reduce__()[1][0])
        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
        if emulator and not options["endpoint_override"]:  # as google-cloud-storage and gcsfs read it
            scheme_name, _, host = emulator.rpartition("://")
            options.update(endpoint_override=host.rstrip("/"), scheme=scheme_name or "http", anonymous=True)
        options["retry_time_limit"] = datetime.timedelta(seconds=timeout)
        return pafs.GcsFileSystem(**options)
    return fs


def _azure(text: str) -> tuple[pafs.FileSystem, str]:
    """``abfs://container[@account.dfs.core.windows.net]/path`` with the settings adlfs reads.

    The account: from the URI or ``AZURE_STORAGE_ACCOUNT_NAME``; credentials: ``AZURE_STORAGE_CONNECTION_STRING``,
    ``AZURE_STORAGE_ACCOUNT_KEY``, ``AZURE_STORAGE_SAS_TOKEN``, or ``AZURE_STORAGE_CLIENT_ID``/``_SECRET``/
    ``AZURE_STORAGE_TENANT_ID``; otherwise Azure's default credential chain.
    """
    pafs = _pyarrow_fs()
    rest = text.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    container, _, host = netloc.partition("@")
    env = os.environ
    connection = dict(part.split("=", 1) for part in env.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";")
                      if "=" in part)
    account = host.split(".")[0] if host else (env.get("AZURE_STORAGE_ACCOUNT_NAME") or connection.get("AccountName"))
    if not account:
        raise ValueError(f"{text}: no Azure storage account; give it in the URI (abfs://container@ACCOUNT.dfs.core."
                         "windows.net/path) or set AZURE_STORAGE_ACCOUNT_NAME or AZURE_STORAGE_CONNECTION_STRING")
    options: dict[str, str] = {}
    key = env.get("AZURE_STORAGE_ACCOUNT_KEY") or connection.get("AccountKey")
    sas = env.get("AZURE_STORAGE_SAS_TOKEN") or connection.get("SharedAccessSignature")
    if key:
        options["account_key"] = key
    elif sas:
        options["sas_token"] = sas
    elif env.get("AZURE_STORAGE_CLIENT_SECRET"):
        options.update(client_id=env.get("AZURE_STORAGE_CLIENT_ID", ""), tenant_id=env.get("AZURE_STORAGE_TENANT_ID", ""),
                       client_secret=env["AZURE_STORAGE_CLIENT_SECRET"])
    # An emulator (Azurite) serves both APIs at its blob endpoint unless a DFS one is given.
    for endpoint, prefix in (("BlobEndpoint", "blob"), ("DfsEndpoint", "dfs")):
        url = connection.get(endpoint) or connection.get("BlobEndpoint")
        if url:
            scheme_name, _, authority = url.partition("://")
            options[f"{prefix}_storage_authority"] = authority.split("/")[0]
            options[f"{prefix}_storage_scheme"] = scheme_name
    return pafs.AzureFileSystem(account, **options), posixpath.join(container, path).rstrip("/")


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI or a local path (made absolute); object-store calls bounded."""
    pafs = _pyarrow_fs()
    text = str(location)
    if not is_uri(text):
        text = text[len("file://"):] if text.startswith("file://") else text
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    if glob.has_magic(text):  # a URI parser may reject glob characters: resolve the fixed part only
        head, _, rest = text.partition("://")
        parts = rest.split("/")
        cut = next(i for i, p in enumerate(parts) if glob.has_magic(p))
        fs, base = resolve(f"{head}://{'/'.join(parts[:cut])}")
        return fs, "/".join([base.rstrip("/"), *parts[cut:]])
    if _scheme_name(text) in AZURE_SCHEMES:
        return _azure(text)
    with bounded(text):  # from_uri may ask the store (an S3 bucket's region)
        fs, path = pafs.FileSystem.from_uri(text)
    return _bounded_filesystem(fs), path


def absolute(location: str) -> str:
    """The location as recorded in outputs: URIs as given, local paths made absolute."""
    return str(location) if is_uri(location) else os.path.abspath(os.path.expanduser(str(location)))


def scheme(location: str) -> str:
    return str(location).split("://", 1)[0] if is_uri(location) else ""


def to_location(scheme_name: str, path: str) -> str:
    """The user-facing form of a filesystem path: ``s3://bucket/key`` or a local path."""
    return f"{scheme_name}://{path}" if scheme_name else path


def join(location: str, *parts: str) -> str:
    """``location``/part/part for URIs and local paths alike."""
    if is_uri(location):
        return posixpath.join(str(location).rstrip("/"), *parts)
    return os.path.join(location, *parts)


def filesystem_of(locations: list[str]) -> pafs.FileSystem | None:
    """The one filesystem of a job's inputs, for Ray's ``filesystem=``; None when all are local."""
    schemes = {scheme(p) for p in locations}
    if len(schemes) > 1:
        raise ValueError(f"inputs mix storage kinds {sorted(s or 'local' for s in schemes)}; "
                         "run one job per filesystem")
    return resolve(locations[0])[0] if schemes != {""} else None


def ray_paths(locations: list[str]) -> list[str]:
    """Paths as Ray's readers want them next to an explicit ``filesystem=`` (no scheme)."""
    return [resolve(p)[1] if is_uri(p) else p for p in locations]


def open_input(location: str):
    """A readable binary stream (seekable file for local paths and object storage)."""
    fs, path = resolve(location)
    with bounded(location):
        return fs.open_input_file(path)


def is_file(location: str | os.PathLike) -> bool:
    """True when ``location`` names a file (a local path, following symlinks, or an object)."""
    pafs = _pyarrow_fs()
    fs, path = resolve(location)
    with bounded(location):
        return fs.get_file_info(path).type == pafs.FileType.File


def exists(location: str) -> bool:
    pafs = _pyarrow_fs()
    fs, path = resolve(location)
    with bounded(location):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def _glob_regex(pattern: str) -> re.Pattern:
    """A path glob as a regex: ``*``/``?`` stay within one path segment, ``**`` spans segments."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:  # fnmatch's translation of one [...] class
                out.append(fnmatch.translate(pattern[i:end + 1])[4:-3])
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _walk_files(fs: pafs.FileSystem, base: str) -> Iterator[str]:
    pafs = _pyarrow_fs()
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            yield info.path


def list_files(spec: str, keep: Callable[[str], bool]) -> list[str]:
    """Files (as URIs) named by a URI to a file, a directory prefix or a glob; sorted."""
    with bounded(spec):
        return _list_files(spec, keep)


def _list_files(spec: str, keep: Callable[[str], bool]) -> list[str]:
    pafs = _pyarrow_fs()
    fs, path = resolve(spec)
    prefix = scheme(spec)
    if glob.has_magic(path):
        parts = path.split("/")
        static = "/".join(p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))])
        regex = _glob_regex(path)
        # As glob.glob: wildcards do not match names that start with "." (unless the pattern says ".").
        dotted = "/." in path[len(static):] or path[len(static):].startswith(".")
        matches = [to_location(prefix, f) for f in _walk_files(fs, static) if regex.match(f)
                   and (dotted or not any(part.startswith(".") for part in f[len(static):].split("/")))]
        matches = sorted(m for m in matches if keep(m))
        if not matches:
            raise FileNotFoundError(f"no input files match {spec!r}")
        return matches
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [to_location(prefix, path)]
    if info.type == pafs.FileType.Directory:
        base = path.rstrip("/")
        found = [f for f in _walk_files(fs, base) if not _hidden(f[len(base):])]
        return sorted(m for m in (to_location(prefix, f) for f in found) if keep(m))
    raise FileNotFoundError(f"input {spec!r} does not exist")


_FETCHED: dict[str, str] = {}
def fetch(location: str) -> str:
    """A local copy of a remote file or directory prefix (once per process, in a temp dir); local paths as-is.

    Each Ray actor calls this itself, so no node needs the driver's files: only the URI.
    """
    pafs = _pyarrow_fs()
    if not is_uri(location):
        return location
    location = str(location).rstrip("/")
    if location not in _FETCHED:
        import atexit
        import shutil

        fs, path = resolve(location)
        local = _fetch_dir()
        atexit.register(shutil.rmtree, local, True)
        with bounded(location):
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"{location!r} does not exist")
            target = os.path.join(local, posixpath.basename(path) or "root")
            if info.type == pafs.FileType.Directory:
                os.makedirs(target)  # copy_files does not create the local directory itself
            pafs.copy_files(path, target, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        _FETCHED[location] = target
    return _FETCHED[location]


FETCH_PREFIX = "epee-fetch-"


def _fetch_dir() -> str:
    """A new temp dir for fetched copies, named after this process; those of dead processes are removed first.

    A killed process never runs its ``atexit`` clean-up, so the next fetch on the machine removes its copies.
    """
    import shutil
    import tempfile

    root = tempfile.gettempdir()
    for name in os.listdir(root):
        owner = name[len(FETCH_PREFIX):].split("-", 1)[0]
        if name.startswith(FETCH_PREFIX) and owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{FETCH_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def visible(location: str) -> bool:
    """False for names that start with "." or "_" (hidden files, Hadoop/Spark markers)."""
    return not posixpath.basename(str(location).rstrip("/")).startswith((".", "_"))


def expand(specs: Sequence[str], keep: Callable[[str], bool]) -> list[str]:
    """Files named by paths, URIs, globs or directories (recursively), filtered by ``keep(path)``; sorted.

    ``keep`` must not open the files: unreadable entries are kept for ``problem`` to report.
    """
    found: list[str] = []
    for spec in specs:
        found += list_files(str(spec), keep) if is_uri(spec) else _list_local(str(spec), keep)
    unique = sorted(set(found))
    if not unique:
        raise FileNotFoundError(f"no input files found in {list(specs)}")
    return unique


def _list_local(spec: str, keep: Callable[[str], bool]) -> list[str]:
    """Local listing with ``os`` (unlike pyarrow's, it lists dangling symlinks and loops instead of failing)."""
    spec = os.path.expanduser(spec[len("file://"):] if spec.startswith("file://") else spec)
    if os.path.isdir(spec):
        found = []
        for root, dirs, files in os.walk(spec):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
            found += [os.path.join(root, f) for f in sorted(files) if keep(os.path.join(root, f))]
        return [os.path.abspath(p) for p in found]
    if glob.has_magic(spec):
        matches = [m for m in sorted(glob.glob(spec, recursive=True)) if (os.path.isfile(m) or os.path.islink(m))
                   and keep(m)]
        if not matches:
            raise FileNotFoundError(f"no input files match {spec!r}")
        return [os.path.abspath(p) for p in matches]
    if os.path.isfile(spec):
        return [os.path.abspath(spec)]
    raise FileNotFoundError(f"input {spec!r} does not exist")


def problem(location: str | os.PathLike) -> str | None:
    """Why a listed file cannot be opened (dangling or looping symlink, not a file, no access); None if it can.

    Object-storage listings hold only existing objects, so a URI has no such problem.
    """
    if is_uri(location):
        return None
    try:
        info = os.stat(location)  # follows symlinks
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        if os.path.islink(location):
            return "dangling symbolic link (its target does not exist)"
        if error.errno == errno.ENOENT:
            return "file not found"
        return f"cannot be read ({error.strerror or type(error).__name__})"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a directory or device)"
    if not os.access(location, os.R_OK):
        return "cannot be read (permission denied)"
    return None
