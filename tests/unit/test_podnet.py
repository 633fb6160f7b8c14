"""The local cluster's pod network plan (hack/podnet.py): names, CIDR choice, commands.

Making the namespace needs root; the integration tests run on it (the picker and
Prometheus scrape pods at their own addresses). These check the decisions alone.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

import podnet


def test_names_fit_interface_limits_and_differ_per_state_dir(tmp_path: Path) -> None:
    a, b = podnet.names(tmp_path / "a"), podnet.names(tmp_path / "b")
    assert a != b
    assert podnet.names(tmp_path / "a") == a  # the same cluster finds its namespace again
    for veth in (*a[1:], *b[1:]):
        assert len(veth) <= 15  # IFNAMSIZ - 1


def test_the_pod_cidr_avoids_what_the_machine_routes() -> None:
    assert podnet.choose_second_octet(["default", "192.0.2.0/24"]) == 64
    # Another local cluster's pods, and a VPN's 10.65.3.0/24, push it along.
    taken = ["default", "10.64.0.0/16", "169.254.64.0/30", "10.65.3.0/24", "172.17.0.1"]
    assert podnet.choose_second_octet(taken) == 66
    # A route covering all of 10/8 leaves nothing.
    with pytest.raises(RuntimeError, match="is routed"):
        podnet.choose_second_octet(["10.0.0.0/8"])
    # Link-local alone in the way is enough to move on: the veth ends use it.
    assert podnet.choose_second_octet(["169.254.64.1"]) == 65


def test_setup_commands_route_the_pod_cidr_into_the_namespace_and_make_it_local() -> None:
    cmds = podnet.setup_commands("distillery-x", "dpnhx", "dpnpx", 70)
    assert cmds[0] == ["ip", "netns", "add", "distillery-x"]
    joined = [" ".join(c) for c in cmds]
    assert "ip route add 10.70.0.0/16 via 169.254.70.2 dev dpnhx" in joined
    assert "ip -n distillery-x route add local 10.70.0.0/16 dev lo" in joined
    # The peer end moves into the namespace before it is addressed there.
    moved = joined.index("ip link set dpnpx netns distillery-x")
    assert moved < joined.index("ip -n distillery-x addr add 169.254.70.2/30 dev dpnpx")
    # The host's route is last: nothing routes into a namespace that is not ready.
    assert cmds[-1][:3] == ["ip", "route", "add"]


def test_node_ip_is_inside_the_pod_cidr() -> None:
    net = podnet.PodNetwork("n", "10.70.0.0/16", "h")
    assert ipaddress.ip_address(net.node_ip) in ipaddress.ip_network(net.cidr)


def test_opting_out_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(podnet.OPT_OUT, "off")
    assert podnet.unavailable_reason() == f"{podnet.OPT_OUT}=off"
    net, note = podnet.setup(Path("/nonexistent"), alive=lambda pid: True)
    assert net is None and "loopback" in note and podnet.OPT_OUT in note


def test_a_namespace_is_stale_once_its_cluster_is_gone(tmp_path: Path) -> None:
    import json

    state = tmp_path / "cluster"
    assert podnet.is_stale(state, "distillery-x", lambda pid: True)  # no state file
    state.mkdir()
    (state / "state.json").write_text(
        json.dumps({"pids": {"etcd": 11, "kwok": 12}, "podNetwork": {"netns": "distillery-x"}})
    )
    assert not podnet.is_stale(state, "distillery-x", lambda pid: pid == 12)
    assert podnet.is_stale(state, "distillery-x", lambda pid: False)  # killed
    assert podnet.is_stale(state, "distillery-y", lambda pid: True)  # remade since
