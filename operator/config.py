"""Operator settings. Each field that is a setting names its flag and VOICEVAULT_*
environment variable here (`flags.flag`); `voicevault operator` derives both from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voicevault.operator.flags import flag, json_of, seconds_up_to

PODS = "uploader pods"
WEBHOOK = "validating admission webhook"


def _labels(selector: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in selector.items()))


DEFAULT_RETRY_WINDOW_SECONDS = 7200  # when a setting names none: the seed's 2 hours
LINGER_MAX_S = 30.0  # a held request for more work is answered well inside its 45 s limit


@dataclass(frozen=True)
class UploaderPodConfig:
    """How uploader pods look. The chart sets these from its values."""

    namespace: str = field(
        default="voicevault-system",
        metadata=flag(
            "uploader-namespace", "UPLOADER_NAMESPACE", group=PODS, fallback_env="POD_NAMESPACE"
        ),
    )
    image: str = field(
        default="ghcr.io/voicevault/voicevault:0.1.0",
        metadata=flag("uploader-image", "UPLOADER_IMAGE", group=PODS),
    )
    image_pull_policy: str = field(
        default="IfNotPresent",
        metadata=flag("uploader-image-pull-policy", "UPLOADER_IMAGE_PULL_POLICY", group=PODS),
    )
    service_account: str = field(
        default="voicevault-uploader",
        metadata=flag("uploader-service-account", "UPLOADER_SERVICE_ACCOUNT", group=PODS),
    )
    command: tuple[str, ...] = ("voicevault",)
    recordings_host_path: str = field(
        default="/var/lib/voicevault/recordings",
        metadata=flag(
            "recordings-host-path",
            "RECORDINGS_HOST_PATH",
            "directory on each node holding <namespace>/<mediaPath>",
            group=PODS,
        ),
    )
    run_as_user: int = field(
        default=10001,
        metadata=flag(
            "uploader-uid",
            "UPLOADER_UID",
            "UID the uploader runs as (match the recording service)",
            group=PODS,
        ),
    )
    run_as_group: int = field(
        default=10001, metadata=flag("uploader-gid", "UPLOADER_GID", group=PODS)
    )
    cpu_request: str = field(
        default="100m", metadata=flag("uploader-cpu-request", "UPLOADER_CPU_REQUEST", group=PODS)
    )
    memory_request: str = field(
        default="128Mi",
        metadata=flag("uploader-memory-request", "UPLOADER_MEMORY_REQUEST", group=PODS),
    )
    memory_limit: str = field(
        default="384Mi", metadata=flag("uploader-memory-limit", "UPLOADER_MEMORY_LIMIT", group=PODS)
    )
    concurrency: int = field(
        default=4,
        metadata=flag(
            "upload-concurrency",
            "UPLOAD_CONCURRENCY",
            "recordings uploaded at once in a pod",
            group=PODS,
        ),
    )
    part_concurrency: int = field(
        default=2, metadata=flag("part-concurrency", "PART_CONCURRENCY", group=PODS)
    )
    part_size_mib: int = 8
    progress_interval_seconds: float = field(
        default=10.0, metadata=flag("progress-interval", "PROGRESS_INTERVAL", group=PODS)
    )
    active_deadline_seconds: int = 3600
    log_level: str = "info"
    priority_class: str | None = None
    tolerations: tuple[dict[str, Any], ...] = field(
        default=(),
        metadata=flag(
            "uploader-tolerations",
            "UPLOADER_TOLERATIONS",
            "JSON list of tolerations for uploader pods (taints of recording nodes)",
            group=PODS,
            parse=json_of(list, tuple),
        ),
    )
    # labels of recording nodes: with nodeName set the kubelet still refuses a pod whose
    # nodeSelector its node does not match, so a Recording naming another node fails fast
    node_selector: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=flag(
            "uploader-node-selector",
            "UPLOADER_NODE_SELECTOR",
            "JSON object of the labels every recording node carries",
            group=PODS,
            parse=json_of(dict, _labels),
        ),
    )


@dataclass(frozen=True)
class OperatorConfig:
    pods: UploaderPodConfig = field(default_factory=UploaderPodConfig)
    # recordings per uploader pod, at most contract.MAX_BATCH_ITEMS (the termination
    # message must hold every result)
    batch_size: int = field(default=400, metadata=flag("batch-size", "BATCH_SIZE", group=PODS))
    # uploader pods at once, cluster-wide
    max_active_pods: int = field(
        default=50, metadata=flag("max-active-pods", "MAX_ACTIVE_PODS", group=PODS)
    )
    # seconds between looks at running uploader pods
    poll_interval: float = field(
        default=2.0, metadata=flag("poll-interval", "POLL_INTERVAL", group=PODS)
    )
    # where a running uploader pod asks for more work: "" works it out (the operator's pod
    # IP, or the webhook's bind address when it is not a wildcard), "off" never hands more
    handoff_url: str = field(
        default="",
        metadata=flag(
            "uploader-handoff-url",
            "UPLOADER_HANDOFF_URL",
            "https URL of this operator's webhook port for uploader pods asking for more "
            'work ("" works it out, "off": one batch per pod)',
            group=PODS,
        ),
    )
    # a pod asking for more work when its node has none is answered when work arrives
    # within this many seconds: a held request costs far less than starting the next pod
    linger: float = field(
        default=2.0,
        metadata=flag(
            "uploader-linger",
            "UPLOADER_LINGER",
            "seconds a running uploader pod with nothing left waits for more work on its "
            "node before it ends (0: it ends at once; at most 30)",
            group=PODS,
            parse=seconds_up_to(LINGER_MAX_S),
        ),
    )
    # a pod not running by then is given up on
    pod_start_timeout: float = field(
        default=300.0, metadata=flag("pod-start-timeout", "POD_START_TIMEOUT", group=PODS)
    )
    validation_interval: float = field(
        default=1800.0,
        metadata=flag(
            "validation-interval", "VALIDATION_INTERVAL", "seconds between bucket re-validations"
        ),
    )
    resync_interval: float = field(
        default=600.0,
        metadata=flag(
            "resync-interval",
            "RESYNC_INTERVAL",
            "seconds between looks at every recording, whatever the watch delivered",
        ),
    )
    default_retry_window_seconds: int = field(
        default=DEFAULT_RETRY_WINDOW_SECONDS,
        metadata=flag(
            "default-retry-window",
            "DEFAULT_RETRY_WINDOW",
            "seconds transient failures are retried when a setting names no window "
            "(default 7200: the seed's 2 hours)",
        ),
    )
    callback_attempts: int = field(
        default=5,
        metadata=flag(
            "callback-attempts", "CALLBACK_ATTEMPTS", "attempts to deliver each status callback"
        ),
    )
    callback_timeout: float = field(
        default=10.0,
        metadata=flag(
            "callback-timeout", "CALLBACK_TIMEOUT", "seconds each status callback attempt may take"
        ),
    )


@dataclass(frozen=True)
class WebhookConfig:
    """The admission webhooks the operator serves (HTTPS, AdmissionReview v1): validating
    for settings and credentials, mutating (the finalizer) for a Recording's create."""

    enabled: bool = field(
        default=True,
        metadata=flag(
            "webhook",
            "WEBHOOK_ENABLED",
            "serve the webhooks: bad settings and credentials refused at apply time, the "
            "finalizer given to new recordings",
            group=WEBHOOK,
        ),
    )
    port: int = field(default=9443, metadata=flag("webhook-port", "WEBHOOK_PORT", group=WEBHOOK))
    bind_address: str = field(
        default="0.0.0.0",  # noqa: S104 - in a pod
        metadata=flag("webhook-bind-address", "WEBHOOK_BIND_ADDRESS", group=WEBHOOK),
    )
    namespace: str = field(
        default="voicevault-system",
        metadata=flag(
            "webhook-namespace",
            "WEBHOOK_NAMESPACE",
            "the operator's own namespace, which holds the certificate Secret",
            group=WEBHOOK,
            fallback_env="POD_NAMESPACE",
        ),
    )
    cert_secret: str = field(
        default="voicevault-webhook-cert",
        metadata=flag(
            "webhook-cert-secret",
            "WEBHOOK_CERT_SECRET",
            "Secret (kubernetes.io/tls plus ca.crt) of the serving certificate",
            group=WEBHOOK,
        ),
    )
    configuration: str = field(
        default="voicevault",
        metadata=flag(
            "webhook-configuration",
            "WEBHOOK_CONFIGURATION",
            "Validating- and MutatingWebhookConfiguration (one name) whose caBundle the "
            "operator keeps current",
            group=WEBHOOK,
        ),
    )
    service: str = field(
        default="voicevault",
        metadata=flag(
            "webhook-service",
            "WEBHOOK_SERVICE",
            "Service the API server calls: the certificate names <service>.<namespace>.svc",
            group=WEBHOOK,
        ),
    )
    extra_hosts: tuple[str, ...] = field(
        default=(),
        metadata=flag(
            "webhook-host",
            "WEBHOOK_HOSTS",
            "another DNS name or IP address for the certificate (repeatable)",
            group=WEBHOOK,
        ),
    )
    # False: cert-manager issues the Secret and injects the caBundle; only read and reload it
    manage_cert: bool = field(
        default=True,
        metadata=flag(
            "webhook-manage-cert",
            "WEBHOOK_MANAGE_CERT",
            "issue and renew the certificate and patch the caBundle (off: cert-manager does)",
            group=WEBHOOK,
        ),
    )
    cert_check_interval: float = field(
        default=300.0,
        metadata=flag(
            "webhook-cert-check-interval",
            "WEBHOOK_CERT_CHECK_INTERVAL",
            "seconds between looks at the certificate Secret",
            group=WEBHOOK,
        ),
    )
    renew_before_days: float = field(
        default=30.0,
        metadata=flag(
            "webhook-renew-before-days",
            "WEBHOOK_RENEW_BEFORE_DAYS",
            "renew the certificate this many days before it expires",
            group=WEBHOOK,
        ),
    )
