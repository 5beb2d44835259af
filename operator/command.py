"""`voicevault operator`: run the operator (kopf) with its metrics and health endpoints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
from typing import Any

from voicevault import logs
from voicevault.operator.config import OperatorConfig, UploaderPodConfig

log = logging.getLogger("voicevault.operator")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"VOICEVAULT_{name}", default)


def _json_of(kind: type) -> Any:
    """An argparse type: JSON text that must decode to `kind` (a list or a dict)."""

    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not JSON: {text[:80]!r}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"must be a JSON {kind.__name__}")
        return value

    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Reconcile AwsCredentials, VoiceStorageSettings and Recordings, and run uploader pods "
        "on the nodes that hold the media. Every flag has a VOICEVAULT_* environment default."
    )
    pods = UploaderPodConfig()
    defaults = OperatorConfig()
    add = parser.add_argument
    add("--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    add(
        "--namespace",
        action="append",
        default=None,
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    group = parser.add_argument_group("uploader pods")
    group.add_argument(
        "--uploader-namespace",
        default=_env("UPLOADER_NAMESPACE", os.environ.get("POD_NAMESPACE", pods.namespace)),
    )
    group.add_argument("--uploader-image", default=_env("UPLOADER_IMAGE", pods.image))
    group.add_argument(
        "--uploader-image-pull-policy",
        default=_env("UPLOADER_IMAGE_PULL_POLICY", pods.image_pull_policy),
    )
    group.add_argument(
        "--uploader-service-account", default=_env("UPLOADER_SERVICE_ACCOUNT", pods.service_account)
    )
    group.add_argument(
        "--recordings-host-path",
        default=_env("RECORDINGS_HOST_PATH", pods.recordings_host_path),
        help="directory on each node holding <namespace>/<mediaPath>",
    )
    group.add_argument(
        "--uploader-uid",
        type=int,
        default=_env("UPLOADER_UID", str(pods.run_as_user)),
        help="UID the uploader runs as (match the recording service)",
    )
    group.add_argument(
        "--uploader-gid", type=int, default=_env("UPLOADER_GID", str(pods.run_as_group))
    )
    group.add_argument(
        "--uploader-memory-limit", default=_env("UPLOADER_MEMORY_LIMIT", pods.memory_limit)
    )
    group.add_argument(
        "--uploader-memory-request", default=_env("UPLOADER_MEMORY_REQUEST", pods.memory_request)
    )
    group.add_argument(
        "--uploader-cpu-request", default=_env("UPLOADER_CPU_REQUEST", pods.cpu_request)
    )
    group.add_argument(
        "--uploader-node-selector",
        type=_json_of(dict),
        default=_env("UPLOADER_NODE_SELECTOR", "{}"),
        help="JSON object of the labels every recording node carries",
    )
    group.add_argument(
        "--uploader-tolerations",
        type=_json_of(list),
        default=_env("UPLOADER_TOLERATIONS", "[]"),
        help="JSON list of tolerations for uploader pods (taints of recording nodes)",
    )
    group.add_argument(
        "--upload-concurrency",
        type=int,
        default=_env("UPLOAD_CONCURRENCY", str(pods.concurrency)),
        help="recordings uploaded at once in a pod",
    )
    group.add_argument(
        "--part-concurrency",
        type=int,
        default=_env("PART_CONCURRENCY", str(pods.part_concurrency)),
    )
    group.add_argument(
        "--progress-interval",
        type=float,
        default=_env("PROGRESS_INTERVAL", str(pods.progress_interval_seconds)),
    )
    group.add_argument(
        "--batch-size", type=int, default=_env("BATCH_SIZE", str(defaults.batch_size))
    )
    group.add_argument(
        "--max-active-pods",
        type=int,
        default=_env("MAX_ACTIVE_PODS", str(defaults.max_active_pods)),
    )
    group.add_argument(
        "--pod-start-timeout",
        type=float,
        default=_env("POD_START_TIMEOUT", str(defaults.pod_start_timeout)),
    )
    group.add_argument(
        "--poll-interval",
        type=float,
        default=_env("POLL_INTERVAL", str(defaults.poll_interval)),
    )
    other = parser.add_argument_group("operation")
    other.add_argument(
        "--default-retry-window",
        type=int,
        default=_env("DEFAULT_RETRY_WINDOW", str(defaults.default_retry_window_seconds)),
        help="seconds transient failures are retried when a setting names no window "
        "(default 7200: the seed's 2 hours)",
    )
    other.add_argument(
        "--validation-interval",
        type=float,
        default=_env("VALIDATION_INTERVAL", str(defaults.validation_interval)),
        help="seconds between bucket re-validations",
    )
    other.add_argument(
        "--resync-interval",
        type=float,
        default=_env("RESYNC_INTERVAL", str(defaults.resync_interval)),
        help="seconds between looks at every recording, whatever the watch delivered",
    )
    other.add_argument("--metrics-port", type=int, default=_env("METRICS_PORT", "8080"))
    other.add_argument("--health-port", type=int, default=_env("HEALTH_PORT", "8081"))
    other.add_argument("--bind-address", default=_env("BIND_ADDRESS", "0.0.0.0"))  # noqa: S104 - in a pod
    other.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    other.add_argument(
        "--log-format", default=_env("LOG_FORMAT", "json"), choices=["json", "plain"]
    )


def config_from(args: argparse.Namespace) -> OperatorConfig:
    pods = UploaderPodConfig(
        namespace=args.uploader_namespace,
        image=args.uploader_image,
        image_pull_policy=args.uploader_image_pull_policy,
        service_account=args.uploader_service_account,
        recordings_host_path=args.recordings_host_path,
        run_as_user=args.uploader_uid,
        run_as_group=args.uploader_gid,
        memory_limit=args.uploader_memory_limit,
        memory_request=args.uploader_memory_request,
        cpu_request=args.uploader_cpu_request,
        node_selector=tuple(
            sorted((str(k), str(v)) for k, v in args.uploader_node_selector.items())
        ),
        tolerations=tuple(args.uploader_tolerations),
        concurrency=args.upload_concurrency,
        part_concurrency=args.part_concurrency,
        progress_interval_seconds=args.progress_interval,
        log_level="debug" if args.log_level == "debug" else "info",
    )
    return OperatorConfig(
        pods=pods,
        batch_size=args.batch_size,
        max_active_pods=args.max_active_pods,
        pod_start_timeout=args.pod_start_timeout,
        poll_interval=args.poll_interval,
        validation_interval=args.validation_interval,
        resync_interval=args.resync_interval,
        default_retry_window_seconds=args.default_retry_window,
    )


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level, args.log_format)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    import kopf
    from kopf._core.engines.peering import Identity  # kopf exports no public name for it
    from prometheus_client import start_http_server

    from voicevault.operator import handlers
    from voicevault.operator.controller import Controller
    from voicevault.operator.kube import Kube, load_api_client

    config = config_from(args)
    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    kube = Kube(load_api_client())
    controller = Controller(kube, config)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        settings.posting.enabled = False  # we post our own Events, without secrets
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        # kopf keeps a worker (and its slot of the 200) per object until it has been idle
        # this long; at its default of 5 s a burst of new objects waits for slots, not work
        settings.queueing.worker_limit = 200
        settings.queueing.idle_timeout = 0.5
        settings.networking.request_timeout = 60
        await controller.start()
        log.info("operator started", extra={"uploader_namespace": config.pods.namespace})

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: Any, **_: Any) -> None:
        await controller.stop()

    start_http_server(args.metrics_port, addr=args.bind_address)
    try:
        kopf.run(
            registry=registry,
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace or [],
            liveness_endpoint=f"http://{args.bind_address}:{args.health_port}/healthz",
            memo=kopf.Memo(controller=controller),
            # kopf's default identity asks the passwd database for the user's name: the
            # image runs as a numeric UID with no entry there, which made it crash at start
            identity=Identity(f"voicevault@{socket.gethostname()}"),
        )
    finally:
        kube.close()
    return 0
