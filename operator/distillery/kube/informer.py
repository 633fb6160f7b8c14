"""Watches of the operator's own objects, and the in-memory indices they fill.

A reconcile reads a DMD, its children and its pods from memory, never from the API
server; these watches keep that memory. They replace kopf's indices, measured to cost
too much at fleet scale (docs/operations.md, 2,000 DMDs):

- kopf holds back every handler until every indexed object has been indexed, with one
  readiness toggle per object, and each toggle dropped wakes every waiting worker: a
  restart over 2,000 DMDs took 343.8 s of CPU, 13.4 times that over 500.
- kopf queues each object's whole watch event (managedFields and all) for a per-object
  worker, and reads the streams faster than a loop busy rendering runs the workers: the
  burst's heap peak was those queued bodies.

Here one thread per watched resource (and namespace) lists, in pages, then watches from
the listing's resourceVersion, as client-go's reflector does: bookmarks keep the
version fresh, an expired version (410 Gone) lists again, a dropped stream resumes. The
thread decodes each event, keeps of it only what the index functions return (the
slim DMD, a pod's :class:`PodInfo`, a child's state) and lets the body go; the event
loop gets only those small entries and applies them. The indices count as filled once
every watch has listed once: one flag, not one per object. A resource the cluster does
not serve (no LeaderWorkerSet or Gateway API installed) counts as listed and empty, and
is looked for again now and then, so installing it later needs no restart.

Changes reach :class:`Informers`' ``on_change`` only once the indices are filled; what
was listed before that is in the indices when ``on_ready`` runs, which reconciles it
all. A later relisting reports, by object, what it changed against what was held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import urllib3

from distillery import metrics
from distillery.kube.rest import ApiError, Rest, resource_path

log = logging.getLogger("distillery.watch")

Key = tuple[str, str]
# What an index keeps of one object: its key, and the value reconciling reads (None: the
# object is not in that index).
IndexFunction = Callable[[Mapping[str, Any]], tuple[Key, Any] | None]
# Per index name, the object's (key, value).
Entries = dict[str, tuple[Key, Any]]

# Objects per page of a listing: a restart lists every DMD, child and pod of a fleet, and
# one answer holding them all would be the process's memory peak.
LIST_CHUNK = 500
# The API server ends a watch after this long; the thread watches again from the last
# resourceVersion. Below the usual proxy and load balancer idle limits.
WATCH_SECONDS = 270
# The client gives up on a silent stream after this long (bookmarks arrive about once a
# minute), and on connecting after CONNECT_SECONDS.
READ_SECONDS = WATCH_SECONDS + 60
CONNECT_SECONDS = 30
# Between attempts after an error: doubling from the first to the last.
BACKOFF_SECONDS = (1.0, 30.0)
# How often a resource the cluster does not serve is looked for again.
NOT_SERVED_RECHECK_SECONDS = 60.0


class Index(Mapping[Key, list[Any]]):
    """Values by key (a DMD's namespace and name); several objects may share a key (the
    pods of one DMD). Changed only on the event loop, read there too."""

    def __init__(self) -> None:
        self._values: dict[Key, dict[str, Any]] = {}

    def __getitem__(self, key: Key) -> list[Any]:
        return list(self._values[key].values())

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def put(self, uid: str, key: Key, value: Any) -> None:
        self._values.setdefault(key, {})[uid] = value

    def drop(self, uid: str, key: Key) -> None:
        values = self._values.get(key)
        if values is not None:
            values.pop(uid, None)
            if not values:
                del self._values[key]


@dataclass(frozen=True, kw_only=True)
class Watch:
    """One resource the operator watches, and the indices its objects feed."""

    name: str
    group: str  # "" for the core API
    version: str
    plural: str
    kind: str
    selector: str
    indexers: Mapping[str, IndexFunction]

    def path(self, namespace: str | None) -> str:
        return resource_path(self.group, self.version, self.plural, namespace)


@dataclass(frozen=True, kw_only=True)
class Change:
    """An object of a watched resource changed: ADDED, MODIFIED or DELETED. ``entries``
    are what its indices hold now (for DELETED: held until then); ``before`` what they
    held before this change."""

    watch: Watch
    type: str
    entries: Entries
    before: Entries


def index_entries(watch: Watch, body: Mapping[str, Any]) -> Entries:
    """What each of the watch's indices keeps of one object. An index function that
    fails on an object leaves it out of that index (logged): one object nobody foresaw
    must not stop the watch of all the others."""
    out: Entries = {}
    for name, index in watch.indexers.items():
        try:
            entry = index(body)
        except Exception:  # logged with its object; the watch goes on
            meta = body.get("metadata") or {}
            log.exception(
                "%s %s/%s left out of %s",
                watch.kind,
                meta.get("namespace"),
                meta.get("name"),
                name,
            )
            continue
        if entry is not None:
            out[name] = entry
    return out


class Informers:
    """The operator's watches and the indices they fill (see the module docstring)."""

    def __init__(
        self,
        rest: Rest,
        watches: Sequence[Watch],
        namespaces: Sequence[str],
        on_change: Callable[[Change], None],
        on_ready: Callable[[], None],
    ) -> None:
        self.indices: dict[str, Index] = {name: Index() for w in watches for name in w.indexers}
        self._on_change = on_change
        self._on_ready = on_ready
        self._stopped = threading.Event()
        self.ready = False
        where: list[str | None] = [*namespaces] or [None]
        self._informers = [_Informer(self, rest, w, ns) for w in watches for ns in where]
        self._started = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for informer in self._informers:
            informer.thread.start()

    def stop(self) -> None:
        self._stopped.set()
        for informer in self._informers:
            informer.interrupt()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def wait(self, seconds: float) -> None:
        """Sleep in a watch thread, woken early by :meth:`stop`."""
        self._stopped.wait(seconds)

    def deliver(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the event loop (called from a watch thread)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
            self._loop.call_soon_threadsafe(work)

    def changed(self, change: Change) -> None:
        if self.ready:
            self._on_change(change)

    def listed(self) -> None:
        if self.ready or not all(i.listed for i in self._informers):
            return
        self.ready = True
        metrics.INDEXED.set(1)
        filled = [f"{len(index)} keys in {name}" for name, index in self.indices.items() if index]
        log.info(
            "every watch has listed (%.1f s): %s",
            time.monotonic() - self._started,
            ", ".join(filled) or "nothing yet",
        )
        self._on_ready()


@dataclass
class _Informer:
    """The list and watch of one resource in one namespace (None: all), in a thread."""

    group: Informers
    rest: Rest
    watch: Watch
    namespace: str | None
    listed: bool = False
    # What the indices hold of each object of this watch, by uid; only the loop uses it.
    objects: dict[str, Entries] = field(default_factory=dict)
    thread: threading.Thread = field(init=False)
    _response: Any = None

    def __post_init__(self) -> None:
        where = self.namespace or "all namespaces"
        self.thread = threading.Thread(
            target=self._run, name=f"watch {self.watch.name} in {where}", daemon=True
        )

    # ---- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        version: str | None = None
        delay = BACKOFF_SECONDS[0]
        while not self.group.stopped:
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
                delay = BACKOFF_SECONDS[0]
            except ApiError as exc:
                if exc.status == 404:
                    # Not served here (an optional API): empty until it is.
                    self.group.deliver(lambda: self._replace({}, served=False))
                    version = None
                    self.group.wait(NOT_SERVED_RECHECK_SECONDS)
                    continue
                if exc.status == 410:
                    version = None  # too old: list again
                    continue
                metrics.WATCH_ERRORS.labels(self.watch.plural, str(exc.status)).inc()
                log.warning(
                    "%s: the API server answered %s %s; retrying in %.0f s",
                    self.thread.name,
                    exc.status,
                    exc.message or exc.reason,
                    delay,
                )
                delay = self._pause(delay)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self.group.stopped:
                    return
                metrics.WATCH_ERRORS.labels(self.watch.plural, type(exc).__name__).inc()
                log.warning("%s: %s; retrying in %.0f s", self.thread.name, exc, delay)
                delay = self._pause(delay)
            except Exception as exc:  # a watch that ends would lose events
                metrics.WATCH_ERRORS.labels(self.watch.plural, type(exc).__name__).inc()
                log.exception("%s failed; listing again in %.0f s", self.thread.name, delay)
                version = None
                delay = self._pause(delay)

    def _pause(self, delay: float) -> float:
        self.group.wait(delay)
        return min(delay * 2, BACKOFF_SECONDS[1])

    def interrupt(self) -> None:
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()

    def _get(self, query: Mapping[str, str], read_seconds: float) -> Any:
        selector = {"labelSelector": self.watch.selector} if self.watch.selector else {}
        return self.rest.open(
            "GET",
            self.watch.path(self.namespace),
            query={**selector, **query},
            timeout=(CONNECT_SECONDS, read_seconds),
        )

    def _list(self) -> str:
        """List every object (in pages); hand the loop what the indices keep of them.
        Returns the listing's resourceVersion."""
        objects: dict[str, Entries] = {}
        token = ""
        while True:
            query = {"limit": str(LIST_CHUNK), **({"continue": token} if token else {})}
            response = self._get(query, READ_SECONDS)
            try:
                page = json.loads(response.data)
            finally:
                response.release_conn()
            for item in page.get("items") or []:
                # A list's items of built-in kinds carry no kind; the index functions
                # read it (a DaemonSet counts its pods per node).
                item.setdefault("kind", self.watch.kind)
                meta = item.get("metadata") or {}
                objects[str(meta.get("uid"))] = index_entries(self.watch, item)
            del page["items"]
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                version = str((page.get("metadata") or {}).get("resourceVersion") or "")
                self.group.deliver(lambda: self._replace(objects))
                return version

    def _watch(self, version: str) -> str | None:
        """Watch from ``version`` until the server ends the stream; hand the loop each
        change. Returns the last resourceVersion seen, None if it expired (410)."""
        response = self._get(
            {
                "watch": "1",
                "resourceVersion": version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(WATCH_SECONDS),
            },
            READ_SECONDS,
        )
        self._response = response
        try:
            for line in _lines(response):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("message") or ""))
                meta = obj.get("metadata") or {}
                version = str(meta.get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                uid, entries = str(meta.get("uid")), index_entries(self.watch, obj)
                del event, obj, meta
                self.group.deliver(partial(self._apply, uid, str(kind), entries))
        finally:
            self._response = None
            response.release_conn()
        return version

    # ---- the event loop -------------------------------------------------------------

    def _apply(self, uid: str, kind: str, entries: Entries) -> None:
        before = self.objects.get(uid, {})
        if kind != "DELETED" and uid in self.objects and entries == before:
            # What the indices keep of it did not change (a PDB's or pod's status the
            # reconcile does not read, our own apply's echo): a reconcile would read
            # what the last one read, and decide what it decided.
            return
        self._unindex(uid, before)
        if kind == "DELETED":
            self.objects.pop(uid, None)
            if before:
                self.group.changed(
                    Change(watch=self.watch, type=kind, entries=before, before=before)
                )
            return
        self.objects[uid] = entries
        for name, (key, value) in entries.items():
            self.group.indices[name].put(uid, key, value)
        if entries or before:
            self.group.changed(Change(watch=self.watch, type=kind, entries=entries, before=before))

    def _unindex(self, uid: str, entries: Entries) -> None:
        for name, (key, _) in entries.items():
            self.group.indices[name].drop(uid, key)

    def _replace(self, objects: dict[str, Entries], *, served: bool = True) -> None:
        """A (re)listing: what it holds replaces what this watch had; the differences
        are changes (an object deleted while the watch was down is one). Not
        ``served``: the cluster does not serve the resource, and it has no objects."""
        for uid in [u for u in self.objects if u not in objects]:
            self._apply(uid, "DELETED", {})
        for uid, entries in objects.items():
            # An object listed as it was held is no change (_apply skips it).
            self._apply(uid, "MODIFIED" if uid in self.objects else "ADDED", entries)
        if served:
            metrics.WATCH_LISTINGS.labels(self.watch.plural).inc()
        if not self.listed:
            self.listed = True
            self.group.listed()


def _lines(response: Any) -> Iterator[bytes]:
    """The lines of a streamed watch reply (one JSON event each)."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending
