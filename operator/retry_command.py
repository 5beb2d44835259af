"""`voicevault retry`: ask for a manual retry of Cached (or Failed) recordings.

It sets the `voicevault.io/retry` annotation to the current time; the operator starts a
fresh retry window for each recording whose annotation it has not acted on yet.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from voicevault import API_GROUP, API_VERSION
from voicevault.crds.recording import PLURAL, RETRY_ANNOTATION, Phase

RETRYABLE = {Phase.CACHED.value, Phase.FAILED.value}
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Retry recordings whose upload stopped: Cached ones (the retry window ended, the media "
        "is still on its node) and, when named, Failed ones."
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("name", nargs="?", help="the Recording to retry")
    target.add_argument("--all-cached", action="store_true", help="every Cached recording")
    parser.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")
    parser.add_argument(
        "-A", "--all-namespaces", action="store_true", help="with --all-cached: in every namespace"
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG or in-cluster)")


def load_config(kubeconfig: str | None, sa_namespace_file: Path) -> str:
    """Load the kubeconfig (or, inside a pod, the service account); return the namespace.

    Raises ``kubernetes.config.ConfigException`` or ``OSError`` when neither works.
    """
    from kubernetes import config

    try:
        config.load_kube_config(config_file=kubeconfig)
    except config.ConfigException:
        if kubeconfig:
            raise
        config.load_incluster_config()
        try:
            return sa_namespace_file.read_text().strip() or "default"
        except OSError:
            return "default"
    _, context = config.list_kube_config_contexts(config_file=kubeconfig)
    namespace: str = (context or {}).get("context", {}).get("namespace") or "default"
    return namespace


def run(args: argparse.Namespace) -> int:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    if args.all_namespaces and not args.all_cached:
        print(
            "voicevault retry: error: -A/--all-namespaces goes with --all-cached", file=sys.stderr
        )
        return 2
    try:
        default_namespace = load_config(args.kubeconfig, SERVICE_ACCOUNT_NAMESPACE)
    except (config.ConfigException, OSError) as exc:
        print(f"voicevault retry: error: no usable kubeconfig ({exc})", file=sys.stderr)
        return 2
    api = client.CustomObjectsApi()
    namespace = args.namespace or default_namespace
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        targets = _targets(api, args, namespace)
    except ApiException as exc:
        print(f"voicevault retry: error: {exc.status} {exc.reason}", file=sys.stderr)
        return 1
    if args.name and not targets:
        return 1
    patch = {"metadata": {"annotations": {RETRY_ANNOTATION: stamp}}}
    for ns, name in targets:
        try:
            api.patch_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL, name, patch)
        except ApiException as exc:
            print(f"{ns}/{name}: {exc.status} {exc.reason}", file=sys.stderr)
            return 1
        print(f"recording {ns}/{name}: retry requested")
    if not targets:
        print("no Cached recordings found", file=sys.stderr)
    return 0


def _targets(api: Any, args: argparse.Namespace, namespace: str) -> list[tuple[str, str]]:
    if args.name:
        body = api.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, args.name
        )
        phase = (body.get("status") or {}).get("phase")
        if phase not in RETRYABLE:
            print(
                f"voicevault retry: {namespace}/{args.name} is {phase or 'new'}; only Cached or "
                "Failed recordings can be retried",
                file=sys.stderr,
            )
            return []
        return [(namespace, args.name)]
    if args.all_namespaces:
        items = api.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL)["items"]
    else:
        items = api.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL)[
            "items"
        ]
    return [
        (i["metadata"]["namespace"], i["metadata"]["name"])
        for i in items
        if (i.get("status") or {}).get("phase") == Phase.CACHED.value
    ]
