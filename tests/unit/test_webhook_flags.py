"""The webhook's operator flags and their VOICEVAULT_* environment defaults."""

from __future__ import annotations

import argparse

import pytest

from voicevault.operator.command import configure, webhook_config_from
from voicevault.operator.config import WebhookConfig


def _parse(*argv: str) -> WebhookConfig:
    parser = argparse.ArgumentParser(exit_on_error=False)
    configure(parser)
    return webhook_config_from(parser.parse_args(list(argv)))


def test_defaults_serve_the_webhook_with_its_own_certificate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert _parse() == WebhookConfig()
    assert WebhookConfig().enabled and WebhookConfig().manage_cert


def test_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    hook = _parse(
        "--no-webhook-manage-cert",
        "--webhook-port=10443",
        "--webhook-bind-address=127.0.0.1",
        "--webhook-host=127.0.0.1",
        "--webhook-host=webhook.local",
        "--webhook-configuration=vv",
        "--webhook-cert-secret=vv-cert",
        "--webhook-service=vv-svc",
        "--webhook-cert-check-interval=2",
        "--webhook-renew-before-days=7",
    )
    assert hook == WebhookConfig(
        enabled=True,
        port=10443,
        bind_address="127.0.0.1",
        namespace="ops",  # the pod's own namespace
        cert_secret="vv-cert",
        configuration="vv",
        service="vv-svc",
        extra_hosts=("127.0.0.1", "webhook.local"),
        manage_cert=False,
        cert_check_interval=2,
        renew_before_days=7,
    )
    assert not _parse("--no-webhook").enabled


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEVAULT_WEBHOOK_ENABLED", "false")
    monkeypatch.setenv("VOICEVAULT_WEBHOOK_PORT", "8443")
    monkeypatch.setenv("VOICEVAULT_WEBHOOK_HOSTS", "a.example,127.0.0.1")
    monkeypatch.setenv("VOICEVAULT_WEBHOOK_NAMESPACE", "vv")
    hook = _parse()
    assert (hook.enabled, hook.port, hook.namespace) == (False, 8443, "vv")
    assert hook.extra_hosts == ("a.example", "127.0.0.1")
    assert _parse("--webhook").enabled, "a flag beats the environment"
