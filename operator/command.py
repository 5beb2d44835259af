"""`voicevault operator`: run the operator (kopf) with its metrics and health endpoints."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
from typing import Any

from voicevault import logs
from voicevault.operator.config import OperatorConfig, UploaderPodConfig, WebhookConfig
from voicevault.operator.leaselock import LeaseTiming

log = logging.getLogger("voicevault.operator")

# how long the start waits for the first list of Secret names (the watch goes on after)
SECRET_LIST_WAIT_S = 30.0


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
    _configure_webhook(parser.add_argument_group("validating admission webhook"))
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


def _configure_webhook(group: argparse._ArgumentGroup) -> None:
    hook = WebhookConfig()
    add = group.add_argument
    add(
        "--webhook",
        action=argparse.BooleanOptionalAction,
        default=_env("WEBHOOK_ENABLED", "true").lower() in ("1", "true", "yes"),
        help="serve the webhook that refuses bad settings and credentials at apply time",
    )
    add("--webhook-port", type=int, default=int(_env("WEBHOOK_PORT", str(hook.port))))
    add(
        "--webhook-bind-address",
        default=_env("WEBHOOK_BIND_ADDRESS", hook.bind_address),
    )
    add(
        "--webhook-namespace",
        default=_env("WEBHOOK_NAMESPACE", os.environ.get("POD_NAMESPACE", hook.namespace)),
        help="the operator's own namespace, which holds the certificate Secret",
    )
    add(
        "--webhook-cert-secret",
        default=_env("WEBHOOK_CERT_SECRET", hook.cert_secret),
        help="Secret (kubernetes.io/tls plus ca.crt) of the serving certificate",
    )
    add(
        "--webhook-configuration",
        default=_env("WEBHOOK_CONFIGURATION", hook.configuration),
        help="ValidatingWebhookConfiguration whose caBundle the operator keeps current",
    )
    add(
        "--webhook-service",
        default=_env("WEBHOOK_SERVICE", hook.service),
        help="Service the API server calls: the certificate names <service>.<namespace>.svc",
    )
    add(
        "--webhook-host",
        action="append",
        default=[h for h in _env("WEBHOOK_HOSTS", "").split(",") if h],
        help="another DNS name or IP address for the certificate (repeatable)",
    )
    add(
        "--webhook-manage-cert",
        action=argparse.BooleanOptionalAction,
        default=_env("WEBHOOK_MANAGE_CERT", "true").lower() in ("1", "true", "yes"),
        help="issue and renew the certificate and patch the caBundle (off: cert-manager does)",
    )
    add(
        "--webhook-cert-check-interval",
        type=float,
        default=float(_env("WEBHOOK_CERT_CHECK_INTERVAL", str(hook.cert_check_interval))),
        help="seconds between looks at the certificate Secret",
    )
    add(
        "--webhook-renew-before-days",
        type=float,
        default=float(_env("WEBHOOK_RENEW_BEFORE_DAYS", str(hook.renew_before_days))),
        help="renew the certificate this many days before it expires",
    )


def webhook_config_from(args: argparse.Namespace) -> WebhookConfig:
    return WebhookConfig(
        enabled=args.webhook,
        port=args.webhook_port,
        bind_address=args.webhook_bind_address,
        namespace=args.webhook_namespace,
        cert_secret=args.webhook_cert_secret,
        configuration=args.webhook_configuration,
        service=args.webhook_service,
        extra_hosts=tuple(args.webhook_host),
        manage_cert=args.webhook_manage_cert,
        cert_check_interval=args.webhook_cert_check_interval,
        renew_before_days=args.webhook_renew_before_days,
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
    from voicevault.operator.leader import LeaderElector, exit_now
    from voicevault.operator.secretwatch import SecretMetadataWatch
    from voicevault.operator.webhook import Webhook

    config = config_from(args)
    hook = webhook_config_from(args)
    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    kube = Kube(load_api_client())
    controller = Controller(kube, config)
    timing = lease_timing(args)
    elector = (
        LeaderElector(
            Kube(kube.api_client, workers=2),  # renewals never queue behind reconcile calls
            namespace=args.leader_election_namespace,
            name=args.leader_election_name,
            identity=args.leader_election_identity,
            timing=timing,
        )
        if args.leader_elect
        else None
    )
    leading, started = asyncio.Event(), asyncio.Event()

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
            memo.election = asyncio.create_task(elector.run(lead, exit_now), name="election")

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: Any, **_: Any) -> None:
        memo.secret_watch.stop()
        if started.is_set():
            await controller.stop()
        if elector is not None:
            memo.election.cancel()
            await elector.release()

    start_http_server(args.metrics_port, addr=args.bind_address)
    webhook = Webhook(kube.api_client, hook) if hook.enabled else None
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
