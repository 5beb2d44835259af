"""The metric and label names a PromQL expression uses, and those a scrape exports.

promtool checks that an expression parses; this says what it names, so a test can hold
the alert rules and the dashboard to what the operator really exports. It reads the
PromQL the chart writes (selectors, aggregations with by/without, vector matching with
on/ignoring/group_left/group_right, ranges, subqueries, offsets); functions that take
label names as strings are refused rather than half understood.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?
               (?:\d+(?:ms|[smhdwy]))*)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=@,:(){}\[\]])
    """,
    re.VERBOSE,
)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_AGGREGATIONS = {
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "limitk", "limit_ratio",
}  # fmt: skip
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"} | _GROUPING
_LABELS_AS_STRINGS = {"label_replace", "label_join", "count_values", "sort_by_label"}
_WORDS = re.compile(r"[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*")


class PromqlError(ValueError):
    """An expression this reader does not understand."""


@dataclass
class Names:
    """What an expression names: each metric with the labels its selectors match on,
    and the labels its grouping and matching clauses use."""

    selectors: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    grouping: set[str] = field(default_factory=set)
    # (metric, label) -> the values its `=` matchers name, and the words of `=~` matchers
    # that are alternatives of plain words (result=~"transient|fatal")
    values: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    @property
    def metrics(self) -> set[str]:
        return set(self.selectors)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromqlError(f"cannot read {expr[pos : pos + 20]!r} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            out.append((kind, match.group()))
        pos = match.end()
    return out


def names(expr: str) -> Names:
    """The metric and label names in `expr` (Grafana variables already substituted)."""
    found = Names()
    tokens = _tokens(expr)
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "name" and text in _GROUPING:
            i += 1
            if after == "(":
                i = _label_list(tokens, i + 1, found.grouping, expr)
            continue
        if kind == "name" and text in _LABELS_AS_STRINGS:
            raise PromqlError(f"{text}() names labels in strings; not supported: {expr!r}")
        if kind == "name" and (after == "(" or text in _KEYWORDS or text in _AGGREGATIONS):
            i += 1  # a function, an aggregation, or an operator word
            continue
        if kind == "name":
            found.selectors[text]
            i += 1
            if after == "{":
                i = _matchers(tokens, i + 1, found, text, expr)
            continue
        if text == "{":  # a selector by matchers alone: {__name__="..."}
            i = _matchers(tokens, i + 1, found, None, expr)
            continue
        if text == "[":  # a range or subquery: durations only
            while i < len(tokens) and tokens[i][1] != "]":
                i += 1
        i += 1
    return found


def _label_list(tokens: list[tuple[str, str]], i: int, into: set[str], expr: str) -> int:
    """Read `label, label)` from index i; return the index after the `)`."""
    while i < len(tokens) and tokens[i][1] != ")":
        kind, text = tokens[i]
        if kind == "name":
            into.add(text)
        elif text != ",":
            raise PromqlError(f"unexpected {text!r} in a label list: {expr!r}")
        i += 1
    if i >= len(tokens):
        raise PromqlError(f"unclosed label list: {expr!r}")
    return i + 1


def _matchers(
    tokens: list[tuple[str, str]], i: int, found: Names, metric: str | None, expr: str
) -> int:
    """Read `label op "value", ...}` from index i; return the index after the `}`."""
    labels: set[str] = set()
    values: list[tuple[str, str]] = []
    while i < len(tokens) and tokens[i][1] != "}":
        if tokens[i][1] == ",":
            i += 1
            continue
        if i + 2 >= len(tokens) or tokens[i][0] != "name" or tokens[i + 2][0] != "string":
            raise PromqlError(f"unexpected label matcher at {tokens[i][1]!r}: {expr!r}")
        label, op, value = tokens[i][1], tokens[i + 1][1], tokens[i + 2][1]
        if label == "__name__":
            if op != "=":
                raise PromqlError(f"__name__ matched by {op}; name the metric: {expr!r}")
            metric = value[1:-1]
        else:
            labels.add(label)
            text = value[1:-1]
            if op == "=":
                values.append((label, text))
            elif op == "=~" and _WORDS.fullmatch(text):
                values += [(label, word) for word in text.split("|")]
        i += 3
    if i >= len(tokens):
        raise PromqlError(f"unclosed selector: {expr!r}")
    if metric is None:
        raise PromqlError(f"a selector without a metric name: {expr!r}")
    found.selectors[metric] |= labels
    for label, word in values:
        found.values[metric, label].add(word)
    return i + 1


Exported = dict[str, dict[str, set[str]]]


def exported(scrape: str) -> Exported:
    """Each sample name in a Prometheus text scrape (`..._total`, `..._bucket`) with the
    label names its samples carry and the values each label takes."""
    found: Exported = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            labels = found[sample.name]
            for label, value in sample.labels.items():
                labels[label].add(value)
    return {name: dict(labels) for name, labels in found.items()}


def unknown_names(expr: str, available: Exported, target: set[str]) -> list[str]:
    """What `expr` names that `available` (from `exported`) does not have: metrics,
    labels, and label values it matches on. `target` are the labels Prometheus itself
    puts on every scraped series (job, instance); their values are not checked."""
    used = names(expr)
    problems = [f"metric {m}" for m in sorted(used.metrics - set(available))]
    known: set[str] = set(target)
    for metric, labels in sorted(used.selectors.items()):
        have = set(available.get(metric, {})) | target
        known |= have
        problems += [f"label {label} of {metric}" for label in sorted(labels - have)]
    problems += [f"label {label} (grouping)" for label in sorted(used.grouping - known)]
    for (metric, label), words in sorted(used.values.items()):
        if label in target or metric not in available or label not in available[metric]:
            continue
        missing = sorted(words - available[metric][label])
        problems += [f"value {label}={word!r} of {metric}" for word in missing]
    return problems
