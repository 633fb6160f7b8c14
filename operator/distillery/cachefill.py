"""``distillery cache-fill``: copy a model revision into a weight cache volume, once.

This runs in the fill Job the operator renders for ``spec.model.cache`` (see
:mod:`distillery.render.cache`), from the operator's own image, so it needs nothing
beyond the standard library: the Hub's HTTP API for ``hf://`` sources and a file copy
for an artifact mounted at a path (``file://``, how ``oci://`` sources arrive).

Three promises the serving pods rely on:

- **The marker is written last.** :data:`~distillery.render.cache.MARKER` appears only
  after every file is complete and checked against the size the source announced; pods
  refuse to start without it, so nothing ever loads a partial checkpoint.
- **A retry resumes.** Finished files are kept (checked by size); a partial file is
  continued with an HTTP range request, so a failed attempt costs only what it lost.
- **Failures say what to do.** The last line goes to the termination log, which the
  operator copies into the DMD's ``WeightsCached`` condition: a gated model without a
  token, a wrong revision or a claim too small are told apart. The token is sent only
  to the Hub (never on a redirect to its CDN) and never printed.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from distillery.render.cache import MARKER, PROGRESS_PREFIX

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
PROGRESS_SECONDS = 30.0
TIMEOUT_SECONDS = 60.0
# Formats a checkpoint also ships beside safetensors that no engine here loads from a
# folder that has safetensors: skipping them halves the download of many repos.
REDUNDANT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")
REDUNDANT_DIRS = ("original/",)


class FillError(RuntimeError):
    """The fill cannot complete; the message is for the DMD's condition."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the repository root
    size: int | None


@dataclass(frozen=True)
class Summary:
    source: str
    revision: str | None
    commit: str | None
    files: int
    bytes: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "revision": self.revision,
                "commit": self.commit,
                "files": self.files,
                "bytes": self.bytes,
            },
            sort_keys=True,
        )


def select_files(files: list[RemoteFile], wanted: str | None) -> list[RemoteFile]:
    """The files to fetch: ``wanted`` alone (a GGUF file), else the whole revision but
    the formats that safetensors make redundant."""
    if wanted is not None:
        chosen = [f for f in files if f.path == wanted]
        if not chosen:
            raise FillError(f"{wanted} is not in the repository revision: check model.uri")
        return chosen
    if not any(f.path.endswith(".safetensors") for f in files):
        return list(files)
    return [
        f
        for f in files
        if not f.path.endswith(REDUNDANT_SUFFIXES) and not f.path.startswith(REDUNDANT_DIRS)
    ]


def _safe_relative(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts) or path.startswith("/"):
        raise FillError(f"refusing a file path outside the cache: {path!r}")
    return "/".join(parts)


class HubClient:
    """The two Hub calls a fill needs: list a revision's files, fetch one of them."""

    def __init__(self, endpoint: str, token: str | None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token = token

    def _request(self, url: str, headers: dict[str, str] | None = None) -> urllib.request.Request:
        req = urllib.request.Request(url, headers=headers or {})
        if self._token:
            # Unredirected: the CDN a download redirects to never sees the token.
            req.add_unredirected_header("Authorization", f"Bearer {self._token}")
        return req

    def _explain(self, exc: urllib.error.HTTPError, what: str) -> FillError:
        exc.close()  # an HTTP error holds the response's socket open
        if exc.code in (401, 403):
            hint = (
                "the token cannot read it: check the Secret in spec.model.credentialsSecretRef"
                if self._token
                else "the model is gated or private: set spec.model.credentialsSecretRef to "
                "a Secret with a Hub token (HF_TOKEN)"
            )
            return FillError(f"{what}: HTTP {exc.code} from {self.endpoint}: {hint}")
        if exc.code == 404:
            return FillError(
                f"{what}: HTTP 404 from {self.endpoint}: check spec.model.uri and "
                "spec.model.revision"
            )
        return FillError(f"{what}: HTTP {exc.code} from {self.endpoint}")

    def list_files(self, repo: str, revision: str) -> tuple[str | None, list[RemoteFile]]:
        url = (
            f"{self.endpoint}/api/models/{repo}/revision/"
            f"{urllib.parse.quote(revision, safe='')}?blobs=true"
        )
        try:
            with urllib.request.urlopen(self._request(url), timeout=TIMEOUT_SECONDS) as resp:
                info = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise self._explain(exc, f"listing {repo}@{revision}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise FillError(f"listing {repo}@{revision} at {self.endpoint}: {exc}") from None
        siblings = info.get("siblings") or []
        files = [
            RemoteFile(str(s["rfilename"]), s.get("size"))
            for s in siblings
            if isinstance(s, dict) and s.get("rfilename")
        ]
        if not files:
            raise FillError(f"{repo}@{revision} lists no files")
        sha = info.get("sha")
        return (str(sha) if sha else None), files

    def open(self, repo: str, revision: str, path: str, offset: int) -> IO[bytes]:
        url = (
            f"{self.endpoint}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/"
            f"{urllib.parse.quote(path)}"
        )
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            resp: IO[bytes] = urllib.request.urlopen(
                self._request(url, headers), timeout=TIMEOUT_SECONDS
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # the part file is already whole
                exc.close()
                raise _AlreadyWholeError from None
            raise self._explain(exc, f"downloading {path}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise FillError(f"downloading {path} from {self.endpoint}: {exc}") from None
        return resp


class _AlreadyWholeError(Exception):
    pass


@dataclass
class _Progress:
    """The whole fill's bytes on disk, logged every PROGRESS_SECONDS as one line the
    operator reads back from the pod's log for the DMD's status (:data:`PROGRESS_PREFIX`)."""

    log: Callable[[str], None]
    expected: int | None
    done: int = 0
    last: float = field(default_factory=time.monotonic)

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            self.log(PROGRESS_PREFIX + json.dumps({"bytes": self.done, "of": self.expected}))


NO_PROGRESS = _Progress(log=lambda _: None, expected=None)


def _copy(
    src: IO[bytes],
    out: IO[bytes],
    path: str,
    start: int,
    size: int | None,
    log: Callable[[str], None],
    progress: _Progress = NO_PROGRESS,
) -> None:
    """Copy a download, with a progress line every PROGRESS_SECONDS (``kubectl logs``
    on the fill Job shows how far a 100 GB checkpoint is)."""
    done, began = start, time.monotonic()
    last = began
    while chunk := src.read(CHUNK):
        out.write(chunk)
        done += len(chunk)
        progress.add(len(chunk))
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            last = now
            rate = (done - start) / max(now - began, 1e-9) / 1e6
            share = f" ({100 * done / size:.0f}%)" if size else ""
            log(f"{path}: {done} of {size or '?'} bytes{share}, {rate:.0f} MB/s")


def _whole(target: Path, size: int | None) -> bool:
    """A file an earlier attempt finished: present, of the size the source announced."""
    return target.exists() and (size is None or target.stat().st_size == size)


def _download(
    hub: HubClient,
    repo: str,
    revision: str,
    f: RemoteFile,
    dest: Path,
    log: Callable[[str], None],
    progress: _Progress = NO_PROGRESS,
) -> int:
    """One file into ``dest``, resuming a ``.part`` left by an earlier attempt; its size
    checked against the listing. Returns the bytes on disk."""
    target = dest / _safe_relative(f.path)
    if _whole(target, f.size):
        size = target.stat().st_size
        progress.add(size)
        return size
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    progress.add(offset)
    try:
        resp = hub.open(repo, revision, f.path, offset)
    except _AlreadyWholeError:
        resp = None
    if resp is not None:
        with resp:
            status = getattr(resp, "status", 200)
            mode = "ab" if offset and status == 206 else "wb"
            start = offset if mode == "ab" else 0
            with part.open(mode) as out:
                try:
                    _copy(resp, out, f.path, start, f.size, log, progress)
                except (OSError, http.client.HTTPException) as exc:
                    raise FillError(f"downloading {f.path}: {exc!r}") from None
    got = part.stat().st_size
    if f.size is not None and got != f.size:
        raise FillError(f"{f.path}: got {got} bytes of {f.size}: the download was cut off")
    part.replace(target)
    log(f"{f.path}: {got} bytes")
    return got


def _free_bytes(dest: Path) -> int:
    return shutil.disk_usage(dest).free


def _check_space(dest: Path, needed: int) -> None:
    free = _free_bytes(dest)
    if needed > free:
        gib = 1024**3
        raise FillError(
            f"the cache claim is too small: the revision needs {needed / gib:.1f} GiB more, "
            f"{free / gib:.1f} GiB are free; raise spec.model.cache.sizeGiB (or leave it out "
            "to size it from the model)"
        )


def fill_from_hub(
    hub: HubClient, location: str, revision: str, dest: Path, log: Callable[[str], None]
) -> Summary:
    parts = location.strip("/").split("/")
    repo, wanted = "/".join(parts[:2]), ("/".join(parts[2:]) or None)
    commit, listed = hub.list_files(repo, revision)
    files = select_files(listed, wanted)
    missing = sum((f.size or 0) for f in files if not _whole(dest / f.path, f.size))
    _check_space(dest, missing)
    log(f"{repo}@{revision} ({commit or 'unknown commit'}): {len(files)} files, {missing} bytes")
    progress = _Progress(log, sum(f.size or 0 for f in files) or None)
    total = sum(_download(hub, repo, revision, f, dest, log, progress) for f in files)
    return Summary(f"hf://{location.strip('/')}", revision, commit, len(files), total)


def _walk(root: Path) -> Iterator[Path]:
    """The files of a directory source, but a fill's own bookkeeping (its marker, lock
    and partial files) when the source is itself a filled cache."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name not in (MARKER, LOCK) and path.suffix != ".part":
            yield path


def fill_from_directory(source: Path, dest: Path, log: Callable[[str], None]) -> Summary:
    if not source.is_dir():
        raise FillError(f"{source} is not a directory: the artifact was not mounted")
    if (source / LOCK).exists() and not (source / MARKER).exists():
        # A weight cache as the source (a node-local copy): only a complete one.
        raise FillError(f"{source} is a weight cache without its marker: it is not complete")
    files = list(_walk(source))
    needed = sum(p.stat().st_size for p in files)
    _check_space(dest, needed)
    progress = _Progress(log, needed)
    total = 0
    for path in files:
        rel = path.relative_to(source)
        target = dest / rel
        size = path.stat().st_size
        if not _whole(target, size):
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".part")
            shutil.copyfile(path, part)
            part.replace(target)
            log(f"{rel}: {size} bytes")
        total += size
        progress.add(size)
    return Summary(f"file://{source}", None, None, len(files), total)


def existing(dest: Path, source: str, revision: str | None) -> Summary | None:
    """The summary of a fill already complete for this source and revision."""
    marker = dest / MARKER
    try:
        data: dict[str, Any] = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if data.get("source") != source or data.get("revision") != revision:
        return None
    return Summary(
        source, revision, data.get("commit"), int(data.get("files", 0)), int(data.get("bytes", 0))
    )


LOCK = ".distillery-lock"
LOCK_WAIT_LOG_SECONDS = 60.0


@contextlib.contextmanager
def _exclusive(dest: Path, log: Callable[[str], None]) -> Iterator[None]:
    """One fill at a time per volume. A Job deleted to retry can leave its pod running
    while the new Job's pod starts: both would write the same ``.part`` files. flock
    works across the nodes of an NFSv4 share (emulated with byte-range locks)."""
    with (dest / LOCK).open("a") as handle:
        waited = 0.0
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waited % LOCK_WAIT_LOG_SECONDS == 0:
                    log("another fill holds this volume: waiting for it")
                time.sleep(1.0)
                waited += 1.0
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fill(
    source: str,
    revision: str | None,
    dest: Path,
    *,
    env: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> Summary:
    """Fill ``dest`` from ``source`` and write the marker; a fill already complete for
    the same source and revision is kept as it is."""
    env = dict(os.environ if env is None else env)
    scheme, sep, location = source.partition("://")
    if not sep or scheme not in ("hf", "file") or not location:
        raise FillError(f"--source {source!r}: expected hf://org/name[/file] or file:///path")
    dest.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest, log):
        done = existing(dest, source, revision if scheme == "hf" else None)
        if done is not None:
            log(f"already complete: {done.files} files, {done.bytes} bytes")
            return done
        return _fill_locked(scheme, location, source, revision, dest, env, log)


def _fill_locked(
    scheme: str,
    location: str,
    source: str,
    revision: str | None,
    dest: Path,
    env: dict[str, str],
    log: Callable[[str], None],
) -> Summary:
    (dest / MARKER).unlink(missing_ok=True)
    started = time.monotonic()
    if scheme == "hf":
        hub = HubClient(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT, env.get("HF_TOKEN"))
        summary = fill_from_hub(hub, location, revision or "main", dest, log)
    else:
        summary = fill_from_directory(Path("/" + location.lstrip("/")), dest, log)
    # Last, and atomically: a pod that sees the marker sees every file.
    tmp = dest / (MARKER + ".tmp")
    tmp.write_text(summary.to_json() + "\n")
    tmp.replace(dest / MARKER)
    seconds = time.monotonic() - started
    log(f"complete: {summary.files} files, {summary.bytes} bytes in {seconds:.0f}s")
    return summary


def main(
    source: str,
    revision: str | None,
    dest: str,
    termination_log: str = "/dev/termination-log",
    *,
    hold: bool = False,
) -> int:
    """The command: 0 on a complete cache. The outcome's one line goes to the
    termination log, where the operator reads it. With ``hold`` a complete cache is
    held: the process waits for SIGTERM (a DaemonSet's pod stays Running, Ready by its
    marker) and exits 0 then."""

    def report(line: str) -> None:
        with contextlib.suppress(OSError):  # outside a pod there may be none
            Path(termination_log).write_text(line + "\n")

    try:
        summary = fill(source, revision, Path(dest), log=lambda m: print(m, flush=True))
    except FillError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        report(json.dumps({"error": str(exc)}))
        return 1
    report(summary.to_json())
    if hold:
        _wait_for_stop()
    return 0


def _wait_for_stop() -> None:
    """Sleep until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("holding the complete copy until stopped", flush=True)
    while not stop.wait(3600):
        pass
