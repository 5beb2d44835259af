"""The real node's network rule: servers on loopback or the bridge only, pods without a
default route, FORWARD dropping the external interface ahead of kube-proxy's rules."""

from __future__ import annotations

import subprocess

import pytest

from tests.bed.cluster_stack import ClusterStack
from tests.bed.realnode import BRIDGE_IP, RULE_COMMENT, external_interfaces
from tests.bed.realnode_fixtures import CLUSTER_GROUP

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group(CLUSTER_GROUP)]


def test_servers_bind_to_loopback_or_the_bridge(cluster: ClusterStack) -> None:
    listening = cluster.node.listening_sockets()
    assert listening, "the node's processes listen somewhere"
    for address in listening:
        assert address.startswith(("127.0.0.1:", f"{BRIDGE_IP}:")), address


def test_forward_drops_the_external_interface_first(cluster: ClusterStack) -> None:
    rules = subprocess.run(
        ["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    appended = [r for r in rules if r.startswith("-A FORWARD")]
    head = appended[: 2 * len(external_interfaces())]
    assert head and all(RULE_COMMENT in r and r.endswith("-j DROP") for r in head), appended


def test_pods_have_no_default_route(cluster: ClusterStack) -> None:
    spec = {
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "routes",
                "image": cluster.node.project_image,
                "imagePullPolicy": "Never",
                "command": ["cat", "/proc/net/route", "/etc/resolv.conf"],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }
    cluster.node.wait_service_account("default")
    out = cluster.run_pod("default", "routes", spec)
    routes = [line.split() for line in out.splitlines() if line.startswith("eth0")]
    destinations = {fields[1] for fields in routes}
    assert routes and "00000000" not in destinations, out  # no default route
    assert "nameserver 127.0.0.1" in out
