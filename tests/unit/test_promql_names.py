"""The PromQL reader the monitoring tests use to hold rules and dashboard to real names."""

from __future__ import annotations

import pytest

from tests.support.promql import PromqlError, exported, names, unknown_names

SCRAPE = """\
# HELP voicevault_uploads_total Upload attempts.
# TYPE voicevault_uploads_total counter
voicevault_uploads_total{result="completed"} 3.0
# HELP voicevault_recording_store_seconds Time to store.
# TYPE voicevault_recording_store_seconds histogram
voicevault_recording_store_seconds_bucket{le="1.0"} 1.0
voicevault_recording_store_seconds_bucket{le="+Inf"} 1.0
voicevault_recording_store_seconds_count 1.0
voicevault_recording_store_seconds_sum 0.5
# HELP voicevault_leader Leader.
# TYPE voicevault_leader gauge
voicevault_leader 1.0
"""


def test_selectors_grouping_and_matching_are_read() -> None:
    found = names(
        'sum by (result) (rate(voicevault_uploads_total{job=~"$x", result!="lost"}[5m:1m]'
        " offset 1h)) / on(job) group_left(instance) voicevault_leader"
        ' and {__name__="voicevault_cached_recordings", phase="x"}'
    )
    assert found.selectors == {
        "voicevault_uploads_total": {"job", "result"},
        "voicevault_leader": set(),
        "voicevault_cached_recordings": {"phase"},
    }
    assert found.grouping == {"result", "job", "instance"}


def test_aggregation_with_the_clause_after_and_keywords_are_not_metrics() -> None:
    found = names(
        "histogram_quantile(0.99, sum(rate(voicevault_recording_store_seconds_bucket[5m]))"
        " by (le)) > bool 1 unless absent(voicevault_leader) or vector(0)"
    )
    assert found.metrics == {"voicevault_recording_store_seconds_bucket", "voicevault_leader"}
    assert found.grouping == {"le"}


def test_strings_never_count_as_names() -> None:
    found = names('voicevault_leader{job="sum by (evil) (other_metric)"}')
    assert found.metrics == {"voicevault_leader"}
    assert found.grouping == set()


@pytest.mark.parametrize(
    "expr",
    [
        'label_replace(voicevault_leader, "a", "$1", "job", "(.*)")',
        '{__name__=~"voicevault_.+"}',
        '{job="x"}',
        "voicevault_leader{job=}",
        "sum by (le voicevault_leader",
        "voicevault_leader ? 1",
    ],
)
def test_what_it_cannot_read_is_refused(expr: str) -> None:
    with pytest.raises(PromqlError):
        names(expr)


def test_exported_names_are_sample_names_with_their_labels() -> None:
    available = exported(SCRAPE)
    assert available["voicevault_uploads_total"] == {"result": {"completed"}}
    assert available["voicevault_recording_store_seconds_bucket"] == {"le": {"1.0", "+Inf"}}
    assert available["voicevault_leader"] == {}
    assert "voicevault_uploads" not in available  # the family name is not a series


def test_unknown_metrics_and_labels_are_reported() -> None:
    available = exported(SCRAPE)
    target = {"job"}
    good = (
        'sum by (result) (rate(voicevault_uploads_total{job="v",result="completed"}[5m]))'
        " / on(job) voicevault_leader"
    )
    assert unknown_names(good, available, target) == []
    bad = (
        'sum by (phase) (voicevault_uploads_total{status="x"})'
        " + voicevault_uploads + voicevault_leader{result='completed'}"
        ' + voicevault_uploads_total{result=~"completed|Fatal"}'
    )
    assert unknown_names(bad, available, target) == [
        "metric voicevault_uploads",
        "label result of voicevault_leader",
        "label status of voicevault_uploads_total",
        "label phase (grouping)",
        "value result='Fatal' of voicevault_uploads_total",
    ]


def test_values_are_read_from_equality_and_word_alternatives_only() -> None:
    found = names('voicevault_uploads_total{result=~"transient|fatal", job=~".+", le!="1", x="a"}')
    assert found.values == {
        ("voicevault_uploads_total", "result"): {"transient", "fatal"},
        ("voicevault_uploads_total", "x"): {"a"},
    }
