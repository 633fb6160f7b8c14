"""The local cluster's pod network: a network namespace where pods have real addresses.

kwok gives every pod an IP from the cluster's pod CIDR, but nothing answers there, so
the emulated fleet used to serve each pod's metrics on a loopback port and tell
Prometheus so through file discovery. A cluster's consumers do not work that way: the
Gateway API Inference Extension's endpoint picker scrapes ``podIP:targetPort`` from the
pods an InferencePool selects, and Prometheus scrapes the pod's address.

When this process may create network namespaces (root with ``CAP_NET_ADMIN``), the
cluster gets one:

- a veth pair links it to the host, with a /30 of link-local addresses on the two ends;
- inside, the whole pod CIDR is *local* (an ``ip route add local CIDR dev lo`` route),
  so a listener can bind any pod's address without one ``ip addr`` per pod;
- on the host, the pod CIDR is routed into the namespace.

A socket keeps the namespace it was created in, so the fleet creates each pod's
listener in a short-lived thread that entered the namespace (:func:`listen_in`) and
serves it from its ordinary event loop. Everything on the host (the picker, Prometheus,
curl) then reaches ``podIP:8000`` as in a cluster.

Where the namespace cannot be made, :func:`setup` says why and the cluster runs as
before, with loopback ports.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
# Which cluster state directory made each namespace: how a later setup finds the ones a
# killed run (or a deleted temporary directory) left behind.
OWNERS_DIR = Path("/run/distillery-podnet")
# The second octet of a pod CIDR 10.N.0.0/16 is tried in this range; a machine that
# already routes one (another local cluster, a VPN) gets the next free one.
SECOND_OCTETS = range(64, 128)
OPT_OUT = "LOCALCLUSTER_POD_NETWORK"


@dataclass(frozen=True)
class PodNetwork:
    """A pod network this module made: its namespace and the pod CIDR routed into it."""

    netns: str
    cidr: str
    host_veth: str

    @property
    def node_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.cidr).hosts()))


def names(state_dir: Path) -> tuple[str, str, str]:
    """The namespace's and veth ends' names for a cluster's state directory (interface
    names have at most 15 characters)."""
    tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    return f"distillery-{tag}", f"dpnh{tag}", f"dpnp{tag}"


def choose_second_octet(routed: list[str]) -> int:
    """The first N whose 10.N.0.0/16 and link-local 169.254.N.0/30 overlap nothing in
    ``routed`` (destinations from ``ip -4 route``: ``default`` and CIDRs or addresses)."""
    nets = []
    for dest in routed:
        if dest == "default":
            continue
        try:
            nets.append(ipaddress.ip_network(dest, strict=False))
        except ValueError:
            continue
    for n in SECOND_OCTETS:
        mine = (ipaddress.ip_network(f"10.{n}.0.0/16"), ipaddress.ip_network(f"169.254.{n}.0/30"))
        if not any(m.overlaps(net) for m in mine for net in nets if net.version == 4):
            return n
    raise RuntimeError(f"every pod CIDR 10.{SECOND_OCTETS[0]}-{SECOND_OCTETS[-1]}.0.0/16 is routed")


def setup_commands(netns: str, host_veth: str, peer_veth: str, n: int) -> list[list[str]]:
    """The ``ip`` commands that make the namespace for pod CIDR 10.N.0.0/16."""
    host_ip, peer_ip = f"169.254.{n}.1", f"169.254.{n}.2"
    inside = ["ip", "-n", netns]
    return [
        ["ip", "netns", "add", netns],
        ["ip", "link", "add", host_veth, "type", "veth", "peer", "name", peer_veth],
        ["ip", "link", "set", peer_veth, "netns", netns],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", host_veth],
        ["ip", "link", "set", host_veth, "up"],
        [*inside, "link", "set", "lo", "up"],
        [*inside, "addr", "add", f"{peer_ip}/30", "dev", peer_veth],
        [*inside, "link", "set", peer_veth, "up"],
        [*inside, "route", "add", "default", "via", host_ip],
        # Every pod address is local inside: bind any of them, no address per pod.
        [*inside, "route", "add", "local", f"10.{n}.0.0/16", "dev", "lo"],
        ["ip", "route", "add", f"10.{n}.0.0/16", "via", peer_ip, "dev", host_veth],
    ]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


def unavailable_reason() -> str | None:
    """Why this process cannot make a pod network, or None when it can try."""
    if os.environ.get(OPT_OUT, "") in ("off", "0", "none"):
        return f"{OPT_OUT}={os.environ[OPT_OUT]}"
    if os.geteuid() != 0:
        return "not root (network namespaces need CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "no `ip` command (install iproute2)"
    return None


def setup(state_dir: Path, alive: Callable[[int], bool]) -> tuple[PodNetwork | None, str]:
    """Make the cluster's pod network, or say why not: (network, what happened).
    ``alive`` tells whether a cluster's process still runs (the local cluster's own
    check), so the namespaces of clusters that are gone are removed first."""
    reason = unavailable_reason()
    if reason is not None:
        return None, f"pods on loopback ports: {reason}"
    netns, host_veth, peer_veth = names(state_dir)
    collect_stale(alive)
    teardown(netns, host_veth)  # this directory's own, from a killed run
    routes = _ip("ip", "-4", "route", "show")
    n = choose_second_octet([line.split()[0] for line in routes.stdout.splitlines() if line])
    for cmd in setup_commands(netns, host_veth, peer_veth, n):
        done = _ip(*cmd)
        if done.returncode != 0:
            teardown(netns, host_veth)
            return None, f"pods on loopback ports: `{' '.join(cmd)}` failed: {done.stderr.strip()}"
    net = PodNetwork(netns, f"10.{n}.0.0/16", host_veth)
    OWNERS_DIR.mkdir(parents=True, exist_ok=True)
    (OWNERS_DIR / netns).write_text(f"{state_dir.resolve()}\n{host_veth}\n")
    problem = probe(net)
    if problem is not None:
        teardown(netns, host_veth)
        return None, f"pods on loopback ports: the namespace does not answer: {problem}"
    return net, f"pod network {net.cidr} in network namespace {netns}"


def probe(net: PodNetwork) -> str | None:
    """Listen on a pod address inside and connect from here; None when that works."""
    address = str(ipaddress.ip_network(net.cidr).broadcast_address - 1)
    try:
        server = listen_in(net.netns, address, 0)
    except OSError as exc:
        return str(exc)
    with server:
        port = server.getsockname()[1]
        try:
            with socket.create_connection((address, port), timeout=3):
                return None
        except OSError as exc:
            return f"connect {address}:{port}: {exc}"


def teardown(netns: str, host_veth: str) -> None:
    """Remove the namespace (its veth end and the host's go with it); idempotent."""
    _ip("ip", "netns", "delete", netns)
    _ip("ip", "link", "delete", host_veth)
    (OWNERS_DIR / netns).unlink(missing_ok=True)


def is_stale(state_dir: Path, netns: str, alive: Callable[[int], bool]) -> bool:
    """A namespace is stale when the cluster that made it is gone: its state file
    missing, naming another namespace, or listing no process still alive."""
    try:
        state = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return True
    recorded = (state.get("podNetwork") or {}).get("netns")
    if recorded is not None and recorded != netns:
        return True  # (None: being made right now, the state not saved yet)
    return not any(alive(int(pid)) for pid in (state.get("pids") or {}).values())


def collect_stale(alive: Callable[[int], bool]) -> list[str]:
    """Tear down the namespaces of clusters that are gone; returns their names."""
    removed = []
    for owner in sorted(OWNERS_DIR.glob("distillery-*")) if OWNERS_DIR.is_dir() else []:
        lines = owner.read_text().splitlines()
        if len(lines) < 2:
            continue
        if is_stale(Path(lines[0]), owner.name, alive):
            teardown(owner.name, lines[1])
            removed.append(owner.name)
    return removed


def listen_in(netns: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` inside network namespace ``netns``.

    setns(2) moves only the calling thread, so a thread that exits afterwards does it;
    the socket stays in the namespace it was created in and serves from any thread.
    """
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter_and_listen() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(NETNS_DIR / netns, "rb") as ns:
                if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                sock.listen(128)
            except OSError:
                sock.close()
                raise
            sock.setblocking(False)
            made.append(sock)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=enter_and_listen, name=f"netns-{host}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]
