"""`voicevault operator`: run the operator (kopf) with its metrics and health endpoints."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from typing import Any

from voicevault import logs
from voicevault.operator import config, flags
from voicevault.operator.config import OperatorConfig, UploaderPodConfig, WebhookConfig
from voicevault.operator.leaselock import LeaseTiming

log = logging.getLogger("voicevault.operator")

# how long the start waits for the first list of Secret names (the watch goes on after)
SECRET_LIST_WAIT_S = 30.0


def _env(name: str, default: str) -> str:
    return os.environ.get(f"VOICEVAULT_{name}", default)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Reconcile AwsCredentials, VoiceStorageSettings and Recordings, and run uploader pods "
        "on the nodes that hold the media. Every flag has a VOICEVAULT_* environment default."
    )
    pods = UploaderPodConfig()
    add = parser.add_argument
    add("--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    add(
        "--namespace",
        action="append",
        default=None,
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    groups = {
        name: parser.add_argument_group(name) for name in (config.PODS, "operation", config.WEBHOOK)
    }
    flags.add_flags(parser, UploaderPodConfig, groups)
    flags.add_flags(parser, OperatorConfig, groups)
    flags.add_flags(parser, WebhookConfig, groups)
    other = groups["operation"]
    lease = parser.add_argument_group(
        "leader election", "Only the replica holding the Lease reconciles; the others stand by."
    )
    timing = LeaseTiming()
    lease.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=_env("LEADER_ELECT", "true").lower() in ("1", "true", "yes"),
        help="take part in leader election (default: yes; off only for a single replica)",
    )
    lease.add_argument(
        "--leader-election-namespace",
        default=_env("LEADER_ELECTION_NAMESPACE", os.environ.get("POD_NAMESPACE", pods.namespace)),
        help="namespace of the Lease (default: the operator's own)",
    )
    lease.add_argument(
        "--leader-election-name", default=_env("LEADER_ELECTION_NAME", "voicevault-operator")
    )
    lease.add_argument(
        "--leader-election-identity",
        default=_env("LEADER_ELECTION_IDENTITY", os.environ.get("POD_NAME", socket.gethostname())),
        help="this replica's name in the Lease; unique per replica (default: the pod name)",
    )
    lease.add_argument(
        "--lease-duration",
        type=float,
        default=_env("LEASE_DURATION", str(timing.lease_duration)),
        help="seconds a standby waits after the last renewal it saw before taking over",
    )
    lease.add_argument(
        "--renew-deadline",
        type=float,
        default=_env("RENEW_DEADLINE", str(timing.renew_deadline)),
        help="seconds a leader keeps acting without a successful renewal, then exits",
    )
    lease.add_argument(
        "--retry-period",
        type=float,
        default=_env("RETRY_PERIOD", str(timing.retry_period)),
        help="seconds between attempts to take or renew the Lease",
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


def lease_timing(args: argparse.Namespace) -> LeaseTiming:
    timing = LeaseTiming(args.lease_duration, args.renew_deadline, args.retry_period)
    if problems := timing.problems():
        raise SystemExit(f"voicevault operator: leader election: {'; '.join(problems)}")
    return timing


def webhook_config_from(args: argparse.Namespace) -> WebhookConfig:
    config: WebhookConfig = flags.build(WebhookConfig, args)
    return config


def config_from(args: argparse.Namespace) -> OperatorConfig:
    pods = flags.build(
        UploaderPodConfig, args, log_level="debug" if args.log_level == "debug" else "info"
    )
    config: OperatorConfig = flags.build(OperatorConfig, args, pods=pods)
    return config


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level, args.log_format)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    import kopf
    from kopf._core.engines.peering import Identity  # kopf exports no public name for it
    from prometheus_client import start_http_server

    from voicevault.operator import handlers
    from voicevault.operator.controller import Controller
    from voicevault.operator.handoff import HandoffDesk, resolve_url
    from voicevault.operator.kube import Kube, load_api_client
    from voicevault.operator.leader import ElectionThread, LeaderElector, exit_now
    from voicevault.operator.secretwatch import SecretMetadataWatch
    from voicevault.operator.webhook import Webhook

    config = config_from(args)
    hook = webhook_config_from(args)
    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    kube = Kube(load_api_client())
    webhook = Webhook(kube.api_client, hook) if hook.enabled else None
    url = resolve_url(config.handoff_url, hook.bind_address, hook.port, os.environ.get("POD_IP"))
    if webhook is not None and url is not None:
        tls = webhook.tls
        webhook.desk = HandoffDesk(url, lambda: tls.cert)
    controller = Controller(kube, config, desk=webhook.desk if webhook is not None else None)
    timing = lease_timing(args)
    elector = (
        ElectionThread(
            LeaderElector(
                Kube(load_api_client(), workers=2),  # connections of its own
                namespace=args.leader_election_namespace,
                name=args.leader_election_name,
                identity=args.leader_election_identity,
                timing=timing,
            )
        )
        if args.leader_elect
        else None
    )
    leading, started = asyncio.Event(), asyncio.Event()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        settings.posting.enabled = False  # we post our own Events, without secrets
        settings.persistence.diffbase_storage = handlers.NoDiffBase()
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        # kopf keeps a worker (and its slot of the 200) per object until it has been idle
        # this long; at its default of 5 s a burst of new objects waits for slots, not work
        settings.queueing.worker_limit = 200
        settings.queueing.idle_timeout = 0.5
        settings.networking.request_timeout = 60
        loop = asyncio.get_running_loop()

        def secret_changed(namespace: str, name: str) -> None:  # in the watch's thread
            loop.call_soon_threadsafe(controller.notice_secret, namespace, name)

        secrets = SecretMetadataWatch(
            kube.api_client, secret_changed, namespaces=tuple(args.namespace or ())
        )
        memo.secret_watch = secrets
        secrets.start()

        async def lead() -> None:
            # handlers act from now on, each once the controller has read everything afresh
            leading.set()
            # names and versions only; the Secrets that credentials name are read after this
            await asyncio.to_thread(secrets.synced.wait, SECRET_LIST_WAIT_S)
            secrets.announce.set()
            await controller.start()
            started.set()
            # every recording, new ones included: those events went by unhandled
            await controller.resync_all()
            log.info("operator started", extra={"uploader_namespace": config.pods.namespace})

        if elector is None:
            await lead()
        else:  # kopf's watches start now, warm on a standby; the elector calls lead()
            elector.start(lead, exit_now)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: Any, **_: Any) -> None:
        memo.secret_watch.stop()
        if started.is_set():
            await controller.stop()
        if elector is not None:
            await elector.stop()

    start_http_server(args.metrics_port, addr=args.bind_address)
    if webhook is not None:
        webhook.start()  # before kopf: settings can be applied as soon as the operator runs
    try:
        kopf.run(
            registry=registry,
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace or [],
            liveness_endpoint=f"http://{args.bind_address}:{args.health_port}/healthz",
            memo=kopf.Memo(controller=controller, leading=leading, started=started),
            # kopf's default identity asks the passwd database for the user's name: the
            # image runs as a numeric UID with no entry there, which made it crash at start
            identity=Identity(f"voicevault@{socket.gethostname()}"),
        )
    finally:
        if webhook is not None:
            webhook.stop()
        kube.close()
    return 0
