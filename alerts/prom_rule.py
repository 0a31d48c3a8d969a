"""The Prometheus layer: one set of parameters renders the rules file AND models it in Python.

``render_rules(PromRuleParams(), OpsRuleParams())`` is what ``deploy/prometheus/finsent-rules.yml``
holds (a test checks the file is up to date, ``finsent alerts rules`` rewrites it; without
``ops`` only the spike groups are rendered, as the benchmark and the end-to-end test load them);
``evaluate`` computes what those rules decide over per-minute counts, so the detection benchmark
scores the Prometheus rule on exactly the series the in-stream detectors see (and a sample is
confirmed on a real Prometheus by ``tests/alerts/test_alerts_prometheus_rules.py``).

The rule mirrors the in-stream z-test without state: the short window's negative count is tested
against the long window's share (sums divided, never ratios averaged), with the same rise (odds
ratio and share delta) and volume floors. The z is the signed root of the binomial deviance (as
in :func:`alerts.base.binomial_z`; PromQL has ``ln``), not the Wald ``(k - n p) / sqrt(n p (1-p))``
whose tail at a few expected negatives is far heavier than normal (it made all of the rule's false
alarms on the benchmark). Prometheus has no EWMA and no per-topic overdispersion estimate: the
variance is widened by a fixed intra-minute correlation ``rho`` and by the long window's own
sampling error (``n_short * vf_long / n_long``: large when the baseline hour was thin), and the
z threshold is higher than the in-stream one (measured: ``finsent bench alerts``).

Operational rules (``OpsRuleParams``, rendered after the spike groups by ``render_rules(p, ops)``;
``finsent alerts rules`` always passes both) watch the worker itself, on ``job="finsent-worker"``:

* ``FinsentWorkerDown`` (critical): ``up == 0`` for 2m; ``FinsentWorkerNotScraped`` (critical):
  ``absent(up{job="finsent-worker"})`` for 5m (the job lost every target, or was never configured).
* ``FinsentConsumerLagGrowing`` (warning): a Kafka topic's lag, summed over partitions and workers,
  above 1000 messages AND its least-squares slope over 10m positive, for 5m (a backlog being worked
  off, or a small one, stays quiet).
* ``FinsentDeadLetterRateHigh`` (warning): over 10m, dead letters / consumed messages > 5 %, on at
  least 100 consumed messages, for 5m.
* ``FinsentStoreFailing`` (critical): a worker's store retries counter increased in every 2m window
  for 5m (the worker retries at most 15 s apart while the store fails: one blip never fires).
* ``FinsentModelNotServing`` (critical): a scraped worker (``up == 1``) without
  ``finsent_model_info == 1``, for 5m (a worker still loading its model at start-up stays quiet).

Those thresholds are constants (the defaults of ``OpsRuleParams``), not settings: they describe the
worker's health, not the news. Only the dashboard linked from them is settings-derived (the
pipeline dashboard next to ``alert_dashboard_url``). Each carries ``severity``, ``source=prometheus``
and ``category=ops`` labels (Alertmanager routes on ``category``) and ``summary``, ``description``
(what to check next), ``runbook`` (the steps, in order) and ``dashboard`` annotations.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

METRIC = "finsent_items_scored_total"
ALERT = "FinsentNegativeSentimentSpike"
DEFAULT_DASHBOARD = "http://localhost:3000/d/finsent-alerts/finsent-alerts"
PIPELINE_DASHBOARD_PATH = "/d/finsent-pipeline/finsent-pipeline"  # alerts/dashboards.py, uid finsent-pipeline
ENTITY_DASHBOARD_PATH = "/d/finsent-entities/finsent-entities"  # alerts/dashboards.py, uid finsent-entities
ENTITY_ALERT = "FinsentEntityNegativeSurge"  # the worker posts the same name (alerts/entity_agent.py)
ENTITY_METRIC = "finsent_entity_alert_active"
DEFAULT_PIPELINE_DASHBOARD = "http://localhost:3000" + PIPELINE_DASHBOARD_PATH
WORKER_JOB = "finsent-worker"


def _seconds(window: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(window) < 2 or window[-1] not in units or not window[:-1].isdigit():
        raise ValueError(f"window {window!r} must look like 30s, 5m, 1h")
    return int(window[:-1]) * units[window[-1]]


@dataclass(frozen=True, slots=True)
class PromRuleParams:
    short: str = "5m"
    long: str = "1h"
    z_warning: float = 6.0
    z_critical: float = 9.0  # 1.5x the warning: the 10 % -> 60 % at 20 items/min reaches it
    min_ratio: float = 2.0
    critical_ratio: float = 3.0
    min_delta: float = 0.1
    min_volume: int = 30  # items in the short window
    min_baseline: int = 200  # items in the long window
    #: 0s: the deviance z already demands the evidence; `for: 1m` cost a minute on every detection (bench)
    for_: str = "0s"
    #: an alert stays firing this long after its condition last held: a spike whose z dips under the
    #: threshold for a minute (or whose baseline hour starts absorbing it) is one alert, not several
    keep_firing_for: str = "5m"
    p_floor: float = 0.02
    #: intra-minute correlation of items (beta-binomial): the variance of a minute of n items is
    #: n p (1-p) (1 + (n-1) rho). The in-stream detector estimates it per topic; Prometheus uses this.
    rho: float = 0.02
    dashboard_url: str = DEFAULT_DASHBOARD

    @property
    def short_s(self) -> int:
        return _seconds(self.short)

    @property
    def long_s(self) -> int:
        return _seconds(self.long)

    def names(self) -> dict[str, str]:
        s, l = self.short, self.long  # noqa: E741
        return {
            "rate_s": f"topic:finsent_items_scored:rate{s}",
            "neg_rate_s": f"topic:finsent_items_scored_negative:rate{s}",
            "ratio_s": f"topic:finsent_negative_ratio:ratio{s}",
            "rate_l": f"topic:finsent_items_scored:rate{l}",
            "neg_rate_l": f"topic:finsent_items_scored_negative:rate{l}",
            "ratio_l": f"topic:finsent_negative_ratio:ratio{l}",
            "z": f"topic:finsent_negative_spike:zscore{s}",
        }


def alert_expr(p: PromRuleParams, z: float, ratio: float) -> str:
    n = p.names()
    return (
        f"{n['z']} >= {z:g}\n"
        f"and on (topic) {n['ratio_s']} / (1 - {n['ratio_s']}) >= {ratio:g} * {n['ratio_l']} / (1 - {n['ratio_l']})\n"
        f"and on (topic) ({n['ratio_s']} - {n['ratio_l']}) >= {p.min_delta:g}\n"
        f"and on (topic) {n['rate_s']} * {p.short_s} >= {p.min_volume}\n"
        f"and on (topic) {n['rate_l']} * {p.long_s} >= {p.min_baseline}\n"
    )


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line + "\n" for line in text.rstrip("\n").split("\n"))


def _annotations(p: PromRuleParams) -> str:
    n = p.names()

    def q(name: str, fmt: str) -> str:
        return (
            f'{{{{ with printf `{name}{{topic="%s"}}` $labels.topic | query }}}}'
            f"{{{{ . | first | value | {fmt} }}}}{{{{ end }}}}"
        )

    share = q(n["ratio_s"], "humanizePercentage")
    base = q(n["ratio_l"], "humanizePercentage")
    volume = (
        f'{{{{ with printf `{n["rate_s"]}{{topic="%s"}} * {p.short_s}` $labels.topic | query }}}}'
        f'{{{{ . | first | value | printf "%.0f" }}}}{{{{ end }}}}'
    )
    return (
        f"summary: 'Negative sentiment spike on topic {{{{ $labels.topic }}}}'\n"
        f"description: >-\n"
        f"  Topic {{{{ $labels.topic }}}}: {share} negative over the last {p.short}\n"
        f"  against a {base} baseline over {p.long}, on {volume} items\n"
        f'  (z = {{{{ $value | printf "%.1f" }}}}).\n'
        f"negative_share: '{share}'\n"
        f"baseline_share: '{base}'\n"
        f"volume: '{volume}'\n"
        f"zscore: '{{{{ $value | printf \"%.2f\" }}}}'\n"
        f"dashboard: '{p.dashboard_url}?var-topic={{{{ $labels.topic | urlquery }}}}&from=now-1h&to=now'\n"
    )


@dataclass(frozen=True, slots=True)
class OpsRuleParams:
    """Thresholds of the operational rules (constants; see the module docstring)."""

    job: str = WORKER_JOB
    #: a target failing its scrapes this long (a restart takes seconds; 2m is 8 missed 15 s scrapes)
    down_for: str = "2m"
    #: no target at all in the job this long
    absent_for: str = "5m"
    #: messages behind, summed per Kafka topic: about 8 full batches at the default batch_max (128);
    #: a burst the workers absorb stays under it, or drains (slope < 0) and never fires
    lag_threshold: int = 1000
    lag_window: str = "10m"
    lag_for: str = "5m"
    #: dead letters / consumed over the window: poison input or a failing model, not a stray message
    dead_letter_share: float = 0.05
    dead_letter_window: str = "10m"
    dead_letter_min_volume: int = 100  # consumed messages in the window: 5 of 20 is no rate
    dead_letter_for: str = "5m"
    #: the worker retries a failing batch at most 4 s apart (stream/worker.py RETRY_MAX_S): every 2m
    #: window of a failing store holds retries, a single failed insert leaves them for 2m only
    store_window: str = "2m"
    store_for: str = "5m"
    #: metrics are served before the model is loaded: 5m covers a start-up, not a worker without one
    model_for: str = "5m"
    #: a promoted model that a worker cannot load is tried once per version (stream/reload.py), so the
    #: counter steps once: the alert holds for this window after the step, then resolves on its own
    reload_window: str = "1h"
    reload_for: str = "1m"
    dashboard_url: str = DEFAULT_PIPELINE_DASHBOARD


@dataclass(frozen=True, slots=True)
class OpsAlert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str


def _q(text: str) -> str:
    """A YAML single-quoted scalar."""
    return "'" + text.replace("'", "''") + "'"


def _folded(key: str, text: str) -> str:
    """A YAML folded scalar (``>-``): the lines are joined with single spaces again on loading."""
    lines = textwrap.wrap(" ".join(text.split()), 100, break_long_words=False, break_on_hyphens=False)
    return f"{key}: >-\n" + _indent("\n".join(lines), 2)


def _job(o: OpsRuleParams) -> str:
    """The selector every ops rule shares: the worker job only (other jobs export no finsent metrics)."""
    return f'job="{o.job}"'


def _lag_slope_template(o: OpsRuleParams) -> str:
    """Alert-template text for the lag's slope (messages/min): the value alone cannot say whether it still rises."""
    return (
        "{{ with printf `sum(deriv(finsent_consumer_lag_messages{job=%q,kafka_topic=%q}[" + o.lag_window + "])) * 60`"
        ' $labels.job $labels.kafka_topic | query }}{{ . | first | value | printf "%+.0f" }}{{ end }}'
    )


def _dead_letter_reasons_template(o: OpsRuleParams) -> str:
    """Alert-template text for the top three dead-letter reasons: the reason says who to look at next."""
    return (
        "{{ range $i, $s := printf "
        "`sort_desc(topk(3, sum by (reason) (increase(finsent_items_dead_lettered_total{job=%q}["
        + o.dead_letter_window
        + "])) > 0))` $labels.job | query }}"
        '{{ if $i }}, {{ end }}{{ $s.Labels.reason }} ({{ $s.Value | printf "%.0f" }}){{ end }}'
    )


def _consumed_volume_template(o: OpsRuleParams) -> str:
    """Alert-template text for the messages consumed over the window: a share means little without its base."""
    return (
        "{{ with printf `sum(increase(finsent_items_consumed_total{job=%q}[" + o.dead_letter_window + "]))`"
        ' $labels.job | query }}{{ . | first | value | printf "%.0f" }}{{ end }}'
    )


def _worker_down(o: OpsRuleParams) -> OpsAlert:
    """A target whose scrape fails: the one sign that a worker process is gone."""
    return OpsAlert(
        "FinsentWorkerDown",
        f"up{{{_job(o)}}} == 0\n",
        o.down_for,
        "critical",
        "finsent worker {{ $labels.instance }} is down (its /metrics scrape fails)",
        f"Prometheus has failed to scrape {{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) for {o.down_for}."
        " Its partitions go to the other workers of the consumer group once the group rebalances; if it was the"
        " only worker nothing is scored and no spike can be detected. Check whether the process is running and"
        " whether its metrics port answers.",
        "1. systemctl status / kubectl get pods for the worker on {{ $labels.instance }}."
        " 2. curl http://{{ $labels.instance }}/healthz (alive) and /readyz (model, consumer group, store)."
        " 3. Read the worker's last log lines: a ConfigError (metrics port taken, bad settings) exits at start."
        " 4. If the host is up but the port is not reachable from Prometheus, check the firewall and"
        " FINSENT_METRICS_HOST.",
    )


def _worker_not_scraped(o: OpsRuleParams) -> OpsAlert:
    """No target at all: ``up == 0`` cannot fire without a series, so the job's absence needs its own rule."""
    return OpsAlert(
        "FinsentWorkerNotScraped",
        f"absent(up{{{_job(o)}}})\n",
        o.absent_for,
        "critical",
        f"No finsent worker is scraped (job {o.job} has no targets)",
        f"Prometheus has had no target in job {o.job} for {o.absent_for}: the scrape job is missing from"
        " prometheus.yml, or service discovery finds no worker. Nothing about the workers is known, so no other"
        " worker alert can fire. Check the Prometheus configuration and its targets page.",
        f"1. Open Prometheus /targets: is the {o.job} job listed, with which targets?"
        " 2. promtool check config prometheus.yml; the job name must be exactly"
        f" {o.job} (the rules select on it)."
        " 3. With service discovery: check the labels/annotations the workers must carry."
        " 4. If the workers were scaled to zero on purpose, silence this alert in Alertmanager.",
    )


def _consumer_lag_growing(o: OpsRuleParams) -> OpsAlert:
    """A lag above the threshold AND still rising: a backlog being worked off, or a small one, stays quiet."""
    lag = f"finsent_consumer_lag_messages{{{_job(o)}}}"
    return OpsAlert(
        "FinsentConsumerLagGrowing",
        f"sum by (job, kafka_topic) ({lag}) > {o.lag_threshold}\n"
        f"and on (job, kafka_topic) sum by (job, kafka_topic) (deriv({lag}[{o.lag_window}])) > 0\n",
        o.lag_for,
        "warning",
        "finsent workers fall behind on Kafka topic {{ $labels.kafka_topic }}",
        'The workers are {{ $value | printf "%.0f" }} messages behind on {{ $labels.kafka_topic }}'
        f" (threshold {o.lag_threshold}) and the lag is still rising ({_lag_slope_template(o)} messages/min over"
        f" the last {o.lag_window}): items arrive faster than they are scored and stored, so spike alerts come"
        " late. Check whether the store is slow or failing, whether inference got slower, or whether the input"
        " rate jumped.",
        "1. Pipeline dashboard: consumed vs stored rate, inference and store p95 per batch, batch size."
        " 2. A FinsentStoreFailing alert too: fix the store first (the lag is its symptom)."
        " 3. Inference p95 up: check the model variant (int8/fp16) and the CPU/GPU load of the workers."
        " 4. Input rate up (finsent_ingest_items_published_total): add workers, up to the topic's partition"
        " count (FINSENT_PARTITIONS), or raise FINSENT_BATCH_MAX.",
    )


def _dead_letter_rate_high(o: OpsRuleParams) -> OpsAlert:
    """Dead letters as a share of consumed messages, on a minimum volume: 5 of 20 is no rate."""
    job, w = _job(o), o.dead_letter_window
    dl = f"finsent_items_dead_lettered_total{{{job}}}"
    consumed = f"finsent_items_consumed_total{{{job}}}"
    return OpsAlert(
        "FinsentDeadLetterRateHigh",
        f"sum by (job) (rate({dl}[{w}]))\n"
        f"  / sum by (job) (rate({consumed}[{w}])) > {o.dead_letter_share:g}\n"
        f"and on (job) sum by (job) (increase({consumed}[{w}])) >= {o.dead_letter_min_volume}\n",
        o.dead_letter_for,
        "warning",
        "{{ $value | humanizePercentage }} of consumed messages are dead-lettered",
        "{{ $value | humanizePercentage }} of the "
        + _consumed_volume_template(o)
        + " messages consumed by job {{ $labels.job }}"
        f" over the last {w} went to the dead-letter topic"
        f" (threshold {o.dead_letter_share:.0%}); top reasons: {_dead_letter_reasons_template(o)}."
        " Those items are never scored: the sentiment shares, and the spike alerts, miss them."
        " Check which producer sends them (decoding reasons) or the model (model_error).",
        "1. Read a few dead letters: kafka console consumer on the dead-letter topic (FINSENT_TOPIC_DLQ);"
        " each carries its reason and the original key."
        " 2. not_json, invalid_utf8, missing_field, bad_*: a producer writes the wrong format to the raw topic"
        " (compare its source with finsent_ingest_items_published_total by source)."
        " 3. oversize: raise FINSENT_MAX_MESSAGE_BYTES or fix the producer."
        " 4. model_error: the worker logs carry the traceback; check the model files and the accelerator.",
    )


def _store_failing(o: OpsRuleParams) -> OpsAlert:
    """Store retries in every window for a while: one failed insert never fires, a store that stays down does."""
    return OpsAlert(
        "FinsentStoreFailing",
        f"sum by (job, instance) (increase(finsent_store_retries_total{{{_job(o)}}}[{o.store_window}])) > 0\n",
        o.store_for,
        "critical",
        "finsent worker {{ $labels.instance }} cannot store its batches",
        f"Worker {{{{ $labels.instance }}}} has been retrying failed store inserts for {o.store_for}"
        ' ({{ $value | printf "%.0f" }} retries in the last ' + o.store_window + "): scored items are not"
        " written, the batch stays unacknowledged and the consumer lag grows. Check that ClickHouse is up and"
        " reachable, its disk, and the worker's store credentials.",
        "1. curl http://{{ $labels.instance }}/readyz: it names the last store error."
        " 2. The worker log: 'store unavailable' (connection) or 'store insert failed' (a traceback)."
        " 3. ClickHouse: SELECT 1 against the server in FINSENT_STORE, free disk, system.errors, too many parts."
        " 4. Nothing is lost while it retries: once the store answers the batch is written and the lag drains.",
    )


def _model_not_serving(o: OpsRuleParams) -> OpsAlert:
    """A scraped worker without a loaded model: metrics come up before the model, so only a long wait counts."""
    job = _job(o)
    return OpsAlert(
        "FinsentModelNotServing",
        f"(up{{{job}}} == 1)\nunless on (job, instance) (finsent_model_info{{{job}}} == 1)\n",
        o.model_for,
        "critical",
        "finsent worker {{ $labels.instance }} is up without a model",
        f"Worker {{{{ $labels.instance }}}} answers its scrapes but has not reported finsent_model_info = 1 for"
        f" {o.model_for}: it is not scoring (a model that failed to load, or a process in this job that is not"
        " a worker). Check the worker's log and its model directory.",
        "1. curl http://{{ $labels.instance }}/readyz: 'no model loaded' confirms it."
        " 2. The worker log around start-up: the model load error (missing files, FINSENT_MODEL_DIR, variant)."
        " 3. Is the target really a worker? Only `finsent worker` processes belong in job " + o.job + "."
        " 4. Restart the worker once the model directory is fixed.",
    )


def _model_reload_failed(o: OpsRuleParams) -> OpsAlert:
    """A promoted version a worker could not load: it is tried once, so the alert holds for a window and resolves."""
    return OpsAlert(
        "FinsentModelReloadFailed",
        f"sum by (job, instance) (increase(finsent_model_reload_failures_total{{{_job(o)}}}[{o.reload_window}])) > 0\n",
        o.reload_for,
        "warning",
        "finsent worker {{ $labels.instance }} cannot load the promoted model",
        "The model registry's production alias moved to a version that worker {{ $labels.instance }} failed to"
        " load, so it still scores with "
        "{{ with printf `finsent_model_info{job=%q,instance=%q} == 1` $labels.job $labels.instance | query }}"
        "{{ (. | first).Labels.version }}{{ else }}its previous model{{ end }}"
        f" (a failure in the last {o.reload_window}). Workers that did load it score with the new one, so the"
        " fleet may be split between two versions. It does not retry that version. Check the promoted"
        " model's files and the worker's log.",
        "1. The worker log: 'model reload: production moved to ... but it cannot be loaded' names the"
        " version and the error. 2. finsent models list: which version is production, and its path."
        " 3. Fix the model files (model.onnx, tokenizer.json, labels.json) or move production back with"
        " finsent models rollback. 4. A worker tries a version again only after the alias has left it and"
        " come back, or after a restart.",
    )


#: one builder per operational alert, in the order they are rendered (the rules file and the tests follow it)
_OPS_ALERT_BUILDERS: tuple[Callable[[OpsRuleParams], OpsAlert], ...] = (
    _worker_down,
    _worker_not_scraped,
    _consumer_lag_growing,
    _dead_letter_rate_high,
    _store_failing,
    _model_not_serving,
    _model_reload_failed,
)


def ops_alerts(o: OpsRuleParams | None = None) -> list[OpsAlert]:
    """The operational alerts, in the order they are rendered (one builder each, above)."""
    o = o or OpsRuleParams()
    windows = (o.lag_window, o.dead_letter_window, o.store_window, o.reload_window)
    assert all(_seconds(w) for w in windows), "windows must be positive"
    return [build(o) for build in _OPS_ALERT_BUILDERS]


def _render_ops(o: OpsRuleParams) -> str:
    out = ["  - name: finsent-ops-alerts\n", "    rules:\n"]
    for a in ops_alerts(o):
        ann = (
            f"summary: {_q(a.summary)}\n"
            + _folded("description", a.description)
            + _folded("runbook", a.runbook)
            + f"dashboard: {_q(o.dashboard_url)}\n"
        )
        out.append(
            f"      - alert: {a.name}\n"
            f"        expr: |\n{_indent(a.expr, 10)}"
            f"        for: {a.for_}\n"
            f"        labels:\n          severity: {a.severity}\n"
            "          source: prometheus\n          category: ops\n"
            f"        annotations:\n{_indent(ann, 10)}"
        )
    return "".join(out)


def _render_entity(o: OpsRuleParams) -> str:
    """The entity group: a name in an alert episode on any worker (``finsent_entity_alert_active``, at most 50
    label sets: the worker exports the alerting names only). The worker posts the same alert to Alertmanager
    itself when ``FINSENT_ALERTMANAGER_URL`` is set (``source=stream``); this rule is the path without it."""
    base = o.dashboard_url.removesuffix(PIPELINE_DASHBOARD_PATH)
    dash = f"{base}{ENTITY_DASHBOARD_PATH}?var-entity={{{{ $labels.entity_id | urlquery }}}}&from=now-24h&to=now"
    out = ["  - name: finsent-entity-alerts\n", "    rules:\n"]
    for severity, cond in (("warning", "> 0"), ("critical", ">= 2")):
        expr = f"max by (entity, entity_id) ({ENTITY_METRIC}) {cond}\n"
        ann = (
            "summary: 'Negative news surge about {{ $labels.entity }}'\n"
            + _folded(
                "description",
                "Novel negative stories about {{ $labels.entity }} ({{ $labels.entity_id }})"
                " from several sources surged against the name's own baseline (finsent entity detector,"
                " event time). The stored alert has the window, counts, index and top headlines with links:"
                " finsent query alerts --json.",
            )
            + f"dashboard: {_q(dash)}\n"
        )
        out.append(
            f"      - alert: {ENTITY_ALERT}\n"
            f"        expr: |\n{_indent(expr, 10)}"
            "        for: 0s\n"
            f"        labels:\n          severity: {severity}\n          source: prometheus\n          kind: entity\n"
            f"        annotations:\n{_indent(ann, 10)}"
        )
    return "".join(out)


def render_rules(p: PromRuleParams | None = None, ops: OpsRuleParams | None = None) -> str:
    """The Prometheus rules file (YAML text) for ``p``; Prometheus loads it as is.

    With ``ops`` the operational alerts follow the spike groups (``finsent alerts rules`` and the
    shipped file); without, only the spike groups (the benchmark and the end-to-end test).
    """
    p = p or PromRuleParams()
    n = p.names()
    sel_all, sel_neg = METRIC, f'{METRIC}{{sentiment="negative"}}'
    pf, pc = p.p_floor, 1 - p.p_floor
    base = f"clamp({n['ratio_l']}, {pf:g}, {pc:g})"
    neg, pos = f"clamp_min({n['neg_rate_s']}, 1e-12)", f"clamp_min({n['rate_s']} - {n['neg_rate_s']}, 1e-12)"
    # signed root of the binomial deviance of (k, n) against the baseline share, k and n = rate * window
    # (the deviance scales with them), over sqrt(intra-minute widening + the baseline's sampling error)
    z_expr = (
        f"sgn({n['neg_rate_s']} - {n['rate_s']} * {base})\n"
        f"* sqrt(clamp_min(2 * {p.short_s} * (\n"
        f"      {neg} * ln({neg} / ({n['rate_s']} * {base}))\n"
        f"    + {pos} * ln({pos} / ({n['rate_s']} * (1 - {base})))\n"
        f"  ), 0))\n"
        f"/ sqrt(1 + {p.rho:g} * clamp_min({n['rate_s']} * 60 - 1, 0)\n"
        f"       + {n['rate_s']} * {p.short_s} * (1 + {p.rho:g} * clamp_min({n['rate_l']} * 60 - 1, 0))"
        f" / ({n['rate_l']} * {p.long_s}))\n"
    )
    rec = [
        (n["rate_s"], f"sum by (topic) (rate({sel_all}[{p.short}]))\n"),
        (n["neg_rate_s"], f"sum by (topic) (rate({sel_neg}[{p.short}]))\n"),
        (n["ratio_s"], f"{n['neg_rate_s']} / {n['rate_s']}\n"),
        (n["rate_l"], f"sum by (topic) (rate({sel_all}[{p.long}] offset {p.short}))\n"),
        (n["neg_rate_l"], f"sum by (topic) (rate({sel_neg}[{p.long}] offset {p.short}))\n"),
        (n["ratio_l"], f"{n['neg_rate_l']} / {n['rate_l']}\n"),
        (n["z"], z_expr),
    ]
    out = [
        "# finsent: negative-sentiment spike detection (Prometheus 2.x rules file, loaded as is).\n",
        "# GENERATED by `finsent alerts rules` from alerts/prom_rule.py (PromRuleParams); edit there, regenerate.\n",
        f"# Short window {p.short} (the spike) against the {p.long} before it (the topic's own baseline, offset\n",
        "# so a spike never raises its own bar). Ratios divide summed rates per topic (never averages of\n",
        "# ratios). z is the signed root of the binomial deviance, its variance widened for items that\n",
        f"# arrive in clusters (beta-binomial, intra-minute correlation {p.rho:g}) and for the baseline's own\n",
        "# sampling error; the rise is an odds ratio plus a share delta. Thresholds: `finsent bench alerts`\n",
        "# (bench/RESULTS.md, Alerts).\n",
        *(
            [
                f"# Then the worker's health (group finsent-ops-alerts, job={ops.job}): down or not scraped,\n",
                "# consumer lag growing, dead-letter share, store retries, no model; thresholds: OpsRuleParams.\n",
                "# Before them, entity alerts: a name in an alert episode (finsent_entity_alert_active).\n",
            ]
            if ops
            else []
        ),
        "groups:\n",
        "  - name: finsent-sentiment-recording\n",
        "    rules:\n",
    ]
    for name, expr in rec:
        out.append(f"      - record: {name}\n        expr: |\n{_indent(expr, 10)}")
    out += ["  - name: finsent-sentiment-alerts\n", "    rules:\n"]
    keep = f"        keep_firing_for: {p.keep_firing_for}\n" if _seconds(p.keep_firing_for) else ""
    for severity, z, ratio in (("warning", p.z_warning, p.min_ratio), ("critical", p.z_critical, p.critical_ratio)):
        out.append(
            f"      - alert: {ALERT}\n"
            f"        expr: |\n{_indent(alert_expr(p, z, ratio), 10)}"
            f"        for: {p.for_}\n"
            f"{keep}"
            f"        labels:\n          severity: {severity}\n          source: prometheus\n"
            f"        annotations:\n{_indent(_annotations(p), 10)}"
        )
    if ops is not None:
        out.append(_render_entity(ops))
        out.append(_render_ops(ops))
    return "".join(out)


def _window_sums(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing sums over ``w`` columns (minutes), including the current one."""
    c = np.cumsum(x, axis=-1, dtype=np.float64)
    out = c.copy()
    out[..., w:] = c[..., w:] - c[..., :-w]
    return out


def _deviance_z(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Signed root of the binomial deviance, elementwise; what the recording rule computes in PromQL."""
    kk, rest = np.maximum(k, 1e-12), np.maximum(n - k, 1e-12)
    dev = kk * np.log(kk / (n * p)) + rest * np.log(rest / (n * (1 - p)))
    return np.sign(k - n * p) * np.sqrt(np.maximum(2 * dev, 0))


def evaluate(neg: np.ndarray, tot: np.ndarray, p: PromRuleParams | None = None, step_s: int = 60) -> np.ndarray:
    """Severity the rules give at the end of every step: 0 none, 1 warning, 2 critical (with ``for``).

    ``neg``/``tot`` are per-step counts (topics x steps). ``increase()`` over a window is modelled as
    the exact sum of the steps in it (Prometheus extrapolates; the ratios are unaffected, the
    z-score and volume slightly: see the benchmark's Prometheus confirmation).
    """
    p = p or PromRuleParams()
    ws, wl = max(1, p.short_s // step_s), max(1, p.long_s // step_s)
    ks, ns = _window_sums(neg, ws), _window_sums(tot, ws)
    kl, nl = np.zeros(neg.shape), np.zeros(tot.shape)  # the long window ends where the short one starts
    kl[..., ws:], nl[..., ws:] = _window_sums(neg, wl)[..., :-ws], _window_sums(tot, wl)[..., :-ws]
    with np.errstate(divide="ignore", invalid="ignore"):
        rs = ks / ns
        rl = kl / nl
        pl = np.clip(rl, p.p_floor, 1 - p.p_floor)
        per_min = ns / (ws * step_s / 60.0)
        per_min_l = nl / (wl * step_s / 60.0)
        spread = 1 + p.rho * np.maximum(per_min - 1, 0) + ns * (1 + p.rho * np.maximum(per_min_l - 1, 0)) / nl
        z = _deviance_z(ks, ns, pl) / np.sqrt(spread)
        odds_s, odds_l = rs / (1 - rs), rl / (1 - rl)
    common = (rs - rl >= p.min_delta) & (ns >= p.min_volume) & (nl >= p.min_baseline)
    warn = common & (z >= p.z_warning) & (odds_s >= p.min_ratio * odds_l)
    crit = common & (z >= p.z_critical) & (odds_s >= p.critical_ratio * odds_l)
    hold = _seconds(p.for_) // step_s
    keep = _seconds(p.keep_firing_for) // step_s
    out = np.zeros(neg.shape, dtype=np.int8)
    for level, cond in ((1, warn), (2, crit)):
        ok = cond.copy()
        for h in range(1, hold + 1):  # `for`: true at this and the previous `hold` evaluations
            ok[..., h:] &= cond[..., :-h]
            ok[..., :h] = False
        firing = ok.copy()
        for h in range(1, keep + 1):  # `keep_firing_for`: still firing `keep` evaluations after the last `ok`
            firing[..., h:] |= ok[..., :-h]
        out[firing] = level
    return out
