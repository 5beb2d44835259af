"""Operator settings: command-line flags with VOICEVAULT_* environment defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_RETRY_WINDOW_SECONDS = 7200  # when a setting names none: the seed's 2 hours


@dataclass(frozen=True)
class UploaderPodConfig:
    """How uploader pods look. The chart sets these from its values."""

    namespace: str = "voicevault-system"
    image: str = "ghcr.io/voicevault/voicevault:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    service_account: str = "voicevault-uploader"
    command: tuple[str, ...] = ("voicevault",)
    recordings_host_path: str = "/var/lib/voicevault/recordings"
    run_as_user: int = 10001
    run_as_group: int = 10001
    cpu_request: str = "100m"
    memory_request: str = "128Mi"
    memory_limit: str = "384Mi"
    concurrency: int = 4
    part_concurrency: int = 2
    part_size_mib: int = 8
    progress_interval_seconds: float = 10.0
    active_deadline_seconds: int = 3600
    log_level: str = "info"
    priority_class: str | None = None
    tolerations: tuple[dict[str, Any], ...] = ()
    # labels of recording nodes: with nodeName set the kubelet still refuses a pod whose
    # nodeSelector its node does not match, so a Recording naming another node fails fast
    node_selector: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class OperatorConfig:
    pods: UploaderPodConfig = field(default_factory=UploaderPodConfig)
    batch_size: int = 50  # recordings per uploader pod (the termination message must fit)
    max_active_pods: int = 50  # uploader pods at once, cluster-wide
    poll_interval: float = 2.0  # seconds between looks at running uploader pods
    pod_start_timeout: float = 300.0  # a pod not running by then is given up on
    validation_interval: float = 1800.0  # re-validate each bucket this often (seconds)
    # look at every unfinished recording again this often, whatever the watch delivered
    resync_interval: float = 600.0
    default_retry_window_seconds: int = DEFAULT_RETRY_WINDOW_SECONDS
    callback_attempts: int = 5
    callback_timeout: float = 10.0


@dataclass(frozen=True)
class WebhookConfig:
    """The validating admission webhook the operator serves (HTTPS, AdmissionReview v1)."""

    enabled: bool = True
    port: int = 9443
    bind_address: str = "0.0.0.0"  # noqa: S104 - in a pod
    namespace: str = "voicevault-system"  # the operator's own: where the cert Secret lives
    cert_secret: str = "voicevault-webhook-cert"  # noqa: S105 - a name, not a secret
    configuration: str = "voicevault"  # the ValidatingWebhookConfiguration to patch
    service: str = "voicevault"  # its Service: the certificate names <service>.<namespace>.svc
    extra_hosts: tuple[str, ...] = ()  # more names or IPs, e.g. 127.0.0.1 for a URL config
    # False: cert-manager issues the Secret and injects the caBundle; only read and reload it
    manage_cert: bool = True
    cert_check_interval: float = 300.0  # seconds between looks at the Secret
    renew_before_days: float = 30.0  # renew a certificate this long before it expires
