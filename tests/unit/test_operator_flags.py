"""Operator flags and VOICEVAULT_* variables come from the config fields, one per setting."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from voicevault.operator.command import config_from, configure
from voicevault.operator.config import OperatorConfig, UploaderPodConfig, WebhookConfig


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    configure(parser)
    return parser.parse_args(list(argv))


def test_no_flags_and_no_environment_give_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert config_from(_parse()) == OperatorConfig()


def test_every_flagged_field_has_its_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = argparse.ArgumentParser()
    configure(parser)
    help_text = parser.format_help()
    flagged = [
        field.metadata["flag"]
        for cls in (OperatorConfig, UploaderPodConfig, WebhookConfig)
        for field in dataclasses.fields(cls)
        if "flag" in field.metadata
    ]
    assert len(flagged) == 37
    for spec in flagged:
        assert f"--{spec.name}" in help_text
    assert "--callback-attempts" in help_text and "--callback-timeout" in help_text


def test_callback_attempts_and_timeout_by_flag_and_by_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flagged = config_from(_parse("--callback-attempts=2", "--callback-timeout=1.5"))
    assert (flagged.callback_attempts, flagged.callback_timeout) == (2, 1.5)
    monkeypatch.setenv("VOICEVAULT_CALLBACK_ATTEMPTS", "7")
    monkeypatch.setenv("VOICEVAULT_CALLBACK_TIMEOUT", "3")
    from_env = config_from(_parse())
    assert (from_env.callback_attempts, from_env.callback_timeout) == (7, 3.0)
    assert config_from(_parse("--callback-attempts=1")).callback_attempts == 1  # flag wins


def test_uploader_settings_json_values_and_the_pod_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    monkeypatch.setenv("VOICEVAULT_UPLOADER_TOLERATIONS", '[{"key": "rec"}]')
    config = config_from(
        _parse(
            '--uploader-node-selector={"b": "2", "a": 1}',
            "--uploader-uid=7",
            "--batch-size=3",
            "--log-level=debug",
        )
    )
    assert config.pods.namespace == "ops"  # the operator's own namespace by default
    assert config.pods.node_selector == (("a", "1"), ("b", "2"))
    assert config.pods.tolerations == ({"key": "rec"},)
    assert (config.pods.run_as_user, config.batch_size, config.pods.log_level) == (7, 3, "debug")
    with pytest.raises(argparse.ArgumentError, match="must be a JSON dict"):
        _parse("--uploader-node-selector=[1]")


def test_the_uploader_linger_by_flag_by_environment_and_its_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert OperatorConfig().linger == 2.0
    assert config_from(_parse("--uploader-linger=0")).linger == 0.0
    monkeypatch.setenv("VOICEVAULT_UPLOADER_LINGER", "12.5")
    assert config_from(_parse()).linger == 12.5
    for bad in ("31", "-1", "soon"):
        with pytest.raises(argparse.ArgumentError, match="uploader-linger"):
            _parse(f"--uploader-linger={bad}")
