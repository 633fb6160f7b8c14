"""The operator's watches on the event loop's side, without a server: what a listing and
each watch event do to the indices, what they report and when, and how the runtime
reacts (the list and watch requests themselves run against the real API server in
tests/integration/test_operator.py)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

from distillery.kube.informer import Change, Index, Informers, Watch, _lines, index_entries
from distillery.kube.rest import Credentials, Login, Rest
from distillery.kube.runtime import Runtime
from distillery.kube.watched import (
    MANAGED_SELECTOR,
    child_entry,
    dmd_entry,
    fill_pod_entry,
    pod_info,
    slim,
    watches,
)
from distillery.reconcile.children import OWNER_LABEL
from distillery.render.cache import LABEL_CACHE_OF
from tests.support.fake_cluster import FakeCluster
from tests.unit.test_controllers import NS, body, runtime_for

WATCHES = watches()
# A client that is never called: these tests hand the watches' replies in themselves.
NOWHERE = Rest(Login(lambda: Credentials(server="https://127.0.0.1:9")))


def informers(changes: list[Change], ready: list[bool]) -> Informers:
    return Informers(
        NOWHERE,
        WATCHES,
        [],
        on_change=changes.append,
        on_ready=lambda: ready.append(True),
    )


def by_name(group: Informers, name: str) -> Any:
    return next(i for i in group._informers if i.watch.name == name)


def pod(
    name: str, owner: str | None, ready: bool = True, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "labels": {**({OWNER_LABEL: owner} if owner else {}), **(labels or {})},
            "managedFields": [{"manager": "kubelet"}],
        },
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def list_everything(group: Informers, **objects: list[dict[str, Any]]) -> None:
    """Every watch lists: ``objects`` by watch name, the others list nothing."""
    for informer in group._informers:
        listed = objects.get(informer.watch.name, [])
        informer._replace({o["metadata"]["uid"]: index_entries(informer.watch, o) for o in listed})


def test_an_index_holds_several_values_per_key_and_forgets_an_empty_key() -> None:
    index = Index()
    index.put("a", (NS, "m"), 1)
    index.put("b", (NS, "m"), 2)
    index.put("a", (NS, "m"), 3)  # the same object again: replaced
    assert sorted(index[(NS, "m")]) == [2, 3] and list(index) == [(NS, "m")]
    index.drop("a", (NS, "m"))
    index.drop("b", (NS, "m"))
    index.drop("b", (NS, "m"))  # twice: nothing to drop
    assert (NS, "m") not in index and len(index) == 0 and index.get((NS, "m"), []) == []


def test_nothing_is_reported_until_every_watch_has_listed_once() -> None:
    changes: list[Change] = []
    ready: list[bool] = []
    group = informers(changes, ready)
    pods = by_name(group, "pods")
    pods._replace({"uid-p": index_entries(pods.watch, pod("p", "m"))})
    pods._apply("uid-q", "ADDED", index_entries(pods.watch, pod("q", "m")))
    assert not ready and not changes and not group.ready
    # What was listed or watched meanwhile is in the indices when the last listing lands.
    list_everything(group, dmds=[body()], pods=[pod("p", "m"), pod("q", "m")])
    assert ready == [True] and not changes
    assert [p.name for p in group.indices["dmd_pods"][(NS, "m")]] == ["p", "q"]
    assert group.indices["dmd_bodies"][(NS, "m")][0]["metadata"]["uid"] == "uid-m"
    list_everything(group)  # a relisting of everything (410s) is no second start
    assert ready == [True]


def test_a_relisting_reports_what_changed_while_the_watch_was_down() -> None:
    changes: list[Change] = []
    group = informers(changes, [])
    list_everything(group, pods=[pod("kept", "m"), pod("gone", "m"), pod("changed", "m")])
    pods = by_name(group, "pods")
    pods._replace(
        {
            o["metadata"]["uid"]: index_entries(pods.watch, o)
            for o in (pod("kept", "m"), pod("changed", "m", ready=False), pod("new", "m"))
        }
    )
    seen = {(c.type, c.entries["dmd_pods"][1].name) for c in changes}
    assert seen == {("DELETED", "gone"), ("MODIFIED", "changed"), ("ADDED", "new")}
    assert sorted(p.name for p in group.indices["dmd_pods"][(NS, "m")]) == [
        "changed",
        "kept",
        "new",
    ]


def test_an_object_that_changes_key_leaves_its_old_key() -> None:
    """A pod relabelled to another owner (or out of the index) is no longer the first
    owner's, and the change names both."""
    changes: list[Change] = []
    group = informers(changes, [])
    list_everything(group, pods=[pod("p", "a")])
    pods = by_name(group, "pods")
    pods._apply("uid-p", "MODIFIED", index_entries(pods.watch, pod("p", "b")))
    assert (NS, "a") not in group.indices["dmd_pods"]
    assert [p.name for p in group.indices["dmd_pods"][(NS, "b")]] == ["p"]
    (change,) = changes
    assert change.before["dmd_pods"][0] == (NS, "a") and change.entries["dmd_pods"][0] == (NS, "b")
    pods._apply("uid-p", "MODIFIED", index_entries(pods.watch, pod("p", None)))
    assert not group.indices["dmd_pods"] and len(changes) == 2
    pods._apply("uid-p", "DELETED", {})  # no longer indexed: nothing to report
    assert len(changes) == 2


def test_the_index_functions_keep_only_what_reconciling_reads() -> None:
    dmd = body(status={"replicas": 1})
    dmd["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    dmd["metadata"]["labels"] = {"team": "a"}
    key, kept = dmd_entry(dmd)
    assert key == (NS, "m") and "managedFields" not in kept["metadata"]
    assert "labels" not in kept["metadata"] and kept["spec"] == dmd["spec"]
    assert slim(dmd)["status"] == {"replicas": 1}
    assert pod_info(pod("p", None)) is None
    ((_, owner), info) = pod_info(pod("p", "m")) or ((None, None), None)
    assert owner == "m" and info is not None and info.ready
    assert fill_pod_entry(pod("p", "m")) is None
    filled = fill_pod_entry(pod("f", None, labels={LABEL_CACHE_OF: "m"}))
    assert filled is not None and filled[0] == (NS, "m")
    assert child_entry({"kind": "Service", "metadata": {"name": "x", "namespace": NS}}) is None


def test_children_and_pods_are_asked_for_by_the_managed_by_label() -> None:
    for watch in WATCHES:
        if watch.name in ("dmds", "routes"):
            assert watch.selector == "", watch
        else:
            assert watch.selector == MANAGED_SELECTOR, watch
    w = Watch(name="x", group="", version="v1", plural="pods", kind="Pod", selector="", indexers={})
    assert w.path(None) == "/api/v1/pods" and w.path("a") == "/api/v1/namespaces/a/pods"
    apps = Watch(
        name="d",
        group="apps",
        version="v1",
        plural="deployments",
        kind="D",
        selector="",
        indexers={},
    )
    assert apps.path("a") == "/apis/apps/v1/namespaces/a/deployments"


class _Stream:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        return iter(self.chunks)


def test_a_watch_stream_is_cut_into_lines_across_chunks() -> None:
    chunks = [b'{"a":', b'1}\n{"b"', b":2}\n\n", b'{"c":3}']
    assert list(_lines(_Stream(chunks))) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def _rendered_children(cluster: FakeCluster) -> dict[str, list[dict[str, Any]]]:
    """The objects the fake cluster holds, as the child watches would list them."""
    out: dict[str, list[dict[str, Any]]] = {}
    plural = {w.kind: w.name for w in WATCHES}
    for (kind, ns, name), obj in cluster.objects.items():
        listed = copy.deepcopy(obj)
        listed["metadata"]["uid"] = f"{kind}/{ns}/{name}"
        out.setdefault(plural[kind], []).append(listed)
    return out


def wired(runtime: Runtime) -> Informers:
    """Informers reporting to ``runtime``, as Runtime.start wires them (no threads)."""
    group = Informers(
        NOWHERE,
        WATCHES,
        [],
        on_change=runtime.watched,
        on_ready=runtime.indexed,
    )
    runtime.informers = group
    return group


async def until(done: Callable[[], bool]) -> None:
    """Let the loop run the runtime's tasks until ``done``, at most 10 s."""
    for _ in range(2000):
        await asyncio.sleep(0.005)
        if done():
            return


def idle(runtime: Runtime) -> Callable[[], bool]:
    return lambda: not runtime._submitted and not runtime._queued


def test_the_runtime_reconciles_everything_once_listed_and_an_owner_on_a_childs_change() -> None:
    """A restart: nothing is applied before every watch has listed; then every DMD is
    reconciled, and one whose children are all there writes nothing. A child deleted
    afterwards reconciles its owner, which applies it again."""
    cluster = FakeCluster()
    runtime = runtime_for(cluster)

    async def scenario() -> None:
        # The first start: the DMD, no children yet.
        group = wired(runtime)
        by_name(group, "dmds")._replace({"uid-m": index_entries(WATCHES[0], body())})
        await until(idle(runtime))
        assert not cluster.writes() and runtime.indices is None
        list_everything(group, dmds=[body()])
        await until(idle(runtime))
        applied = sorted(what for call, what in cluster.writes() if call == "apply")
        assert applied == ["Deployment/m", "PodDisruptionBudget/m", "Service/m"], applied

        # A restart over what it built: lists it all and writes nothing new.
        runtime2 = runtime_for(cluster)
        again = wired(runtime2)
        status = copy.deepcopy(cluster.status[(NS, "m")])
        before = len(cluster.writes())
        list_everything(again, dmds=[body(status=status)], **_rendered_children(cluster))
        await until(idle(runtime2))
        assert cluster.writes()[before:] == []

        # A child deleted: its DELETED event reconciles the owner, which re-applies it.
        services = by_name(again, "services")
        (uid,) = list(services.objects)
        services._apply(uid, "DELETED", {})
        await until(lambda: ("apply", "Service/m") in cluster.writes()[before:])
        assert ("apply", "Service/m") in cluster.writes()[before:], cluster.writes()[before:]
        await runtime.stop()
        await runtime2.stop()

    asyncio.run(scenario())


def test_listings_are_counted_and_the_indexed_gauge_turns_on() -> None:
    from distillery import metrics

    def value(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("distillery_watch_listings_total", resource="pods")
    services = value("distillery_watch_listings_total", resource="services")
    group = informers([], [])
    by_name(group, "pods")._replace({})
    by_name(group, "services")._replace({}, served=False)  # not served: no listing
    assert value("distillery_watch_listings_total", resource="pods") == before + 1
    assert value("distillery_watch_listings_total", resource="services") == services
    list_everything(group)
    assert value("distillery_indexed") == 1.0


def test_an_object_an_index_function_fails_on_is_left_out_of_that_index_only() -> None:
    def broken(body: Any) -> Any:
        raise KeyError("spec")

    watch = Watch(
        name="pods",
        group="",
        version="v1",
        plural="pods",
        kind="Pod",
        selector="",
        indexers={"dmd_pods": pod_info, "broken": broken},
    )
    entries = index_entries(watch, pod("p", "m"))
    assert list(entries) == ["dmd_pods"]


def test_a_change_the_indices_do_not_keep_is_not_reported() -> None:
    """A pod's or PDB's update that leaves what the index keeps as it was (a field the
    reconcile does not read) reconciles nothing."""
    changes: list[Change] = []
    group = informers(changes, [])
    list_everything(group, pods=[pod("p", "m")])
    pods = by_name(group, "pods")
    unread = pod("p", "m")
    unread["status"]["podIP"] = "10.0.0.7"
    pods._apply("uid-p", "MODIFIED", index_entries(pods.watch, unread))
    assert changes == []
    pods._apply("uid-p", "MODIFIED", index_entries(pods.watch, pod("p", "m", ready=False)))
    assert [c.type for c in changes] == ["MODIFIED"]
