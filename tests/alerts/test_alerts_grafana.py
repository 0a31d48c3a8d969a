"""Every query of the shipped Grafana dashboards runs for real.

SQL: the ClickHouse-plugin macros ($__timeFilter, $__fromTime, $__toTime, $__interval_s) and the
dashboard variables are substituted the way Grafana does, then each query runs against the real
schema on clickhouse-server 18.16 and on chdb, over seeded items and alerts.
PromQL: each expression is evaluated by a real Prometheus scraping the worker's real metric
definitions (``stream.metrics``, ``alerts.sinks``) with the shipped rules loaded.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import start_http_server

from finsent.alerts.dashboards import DEPLOY, files
from finsent.alerts.deploy_files import RULES_PATH
from finsent.core.events import EntityMention, RawItem, ScoredItem, utcnow
from finsent.stream.store import open_store, schema
from tests.alerts.alert_fixtures import entity_alert, topic_alert
from tests.fixtures.prom import free_port

DASHBOARDS = sorted((DEPLOY / "dashboards").glob("*.json"))


def _targets(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = [t for p in dash["panels"] for t in p["targets"]]
    out += [a["target"] for a in dash["annotations"]["list"] if "target" in a]
    out += [{"expr": a["expr"], "datasource": a["datasource"]} for a in dash["annotations"]["list"] if "expr" in a]
    out += [
        {"rawSql": v["query"], "datasource": v["datasource"]}
        for v in dash["templating"]["list"]
        if v.get("type") == "query"
    ]
    return out


def sql_queries() -> list[tuple[str, str]]:
    return [
        (f"{p.stem}:{i}", t["rawSql"])
        for p in DASHBOARDS
        for i, t in enumerate(_targets(json.loads(p.read_text())))
        if "rawSql" in t
    ]


def promql_queries() -> list[tuple[str, str]]:
    return [
        (f"{p.stem}:{i}", t["expr"])
        for p in DASHBOARDS
        for i, t in enumerate(_targets(json.loads(p.read_text())))
        if "expr" in t
    ]


def expand_sql(
    sql: str,
    db: str,
    frm: datetime,
    to: datetime,
    interval_s: int,
    topics: list[str],
    versions: tuple[str, str] = ("m1", "m2"),
    entity: str = "JPM",
) -> str:
    """Grafana's variable interpolation, then the ClickHouse plugin's macros (pkg/macros in the plugin)."""
    sql = sql.replace("${database}", db).replace("$database", db)
    sql = sql.replace("${entity:singlequote}", "'" + entity.replace("'", "\\'") + "'")
    for name, value in zip(("version_a", "version_b"), versions, strict=True):
        sql = sql.replace("${" + name + ":singlequote}", "'" + value.replace("'", "\\'") + "'")
    sql = sql.replace("${topic:singlequote}", ",".join("'" + t.replace("'", "\\'") + "'" for t in topics))
    f, t = int(frm.timestamp()), int(to.timestamp())
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m[1]} >= toDateTime({f}) AND {m[1]} <= toDateTime({t})", sql
    )
    sql = sql.replace("$__fromTime", f"toDateTime({f})").replace("$__toTime", f"toDateTime({t})")
    sql = sql.replace("$__interval_s", str(max(1, interval_s)))
    assert "$" not in sql, f"unexpanded macro or variable in: {sql}"
    return sql


def test_dashboards_and_provisioning_are_current():
    for rel, text in files().items():
        assert (DEPLOY / rel).read_text(encoding="utf-8") == text, f"{rel} is stale: run `finsent alerts dashboards`"
    assert {p.name for p in DASHBOARDS} == {
        "finsent-sentiment.json",
        "finsent-alerts.json",
        "finsent-pipeline.json",
        "finsent-entities.json",
    }
    assert len(sql_queries()) >= 10 and len(promql_queries()) >= 15


def test_alert_dashboard_link_points_at_a_shipped_dashboard():
    uids = {json.loads(p.read_text())["uid"] for p in DASHBOARDS}
    links = set(re.findall(r"/d/([\w-]+)/", RULES_PATH.read_text()))
    assert links and links <= uids


def test_entity_dashboard_uses_datasource_inputs_and_an_entity_variable():
    dash = json.loads((DEPLOY / "dashboards" / "finsent-entities.json").read_text())
    assert {i["name"] for i in dash["__inputs"]} == {"DS_CLICKHOUSE", "DS_PROMETHEUS"}
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_CLICKHOUSE"]["type"] == variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["entity"]["type"] == "query"
    uids = {t["datasource"]["uid"] for t in _targets(dash)}
    assert uids == {"${DS_CLICKHOUSE}", "${DS_PROMETHEUS}"}, uids  # no fixed uid: importable anywhere
    assert all("${entity:singlequote}" in t["rawSql"] for p in dash["panels"] for t in p["targets"] if "rawSql" in t)
    titles = {p["title"] for p in dash["panels"]}
    assert {
        "Mentions by sentiment",
        "Buzz, novel stories, sources",
        "Top stories",
        "Alerts about this entity",
    } <= titles
    alerts = json.loads((DEPLOY / "dashboards" / "finsent-alerts.json").read_text())
    assert {"Entity alerts", "Entities alerting now"} <= {p["title"] for p in alerts["panels"]}


_INPUT_REF = re.compile(r"\$\{(DS_\w+)\}")


def grafana_import(dash: dict[str, Any], chosen: dict[str, str]) -> dict[str, Any]:
    """What Grafana's Dashboards > Import does with an exported dashboard (its dashboard-import template evaluator).

    Every ``__inputs`` entry must be given a value (the form refuses otherwise); each ``${NAME}`` of a declared input is
    replaced in every string of the JSON; other ``${...}`` (dashboard variables such as ``${topic:singlequote}``) are
    left for the dashboard to resolve; ``__inputs`` and ``__requires`` are dropped.
    """
    inputs = {i["name"]: i for i in dash["__inputs"]}
    missing = set(inputs) - set(chosen)
    if missing:
        raise ValueError(f"the import form needs a datasource for {sorted(missing)}")
    values = {"${" + name + "}": chosen[name] for name in inputs}

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return re.sub(r"\$\{[^}]+\}", lambda m: values.get(m[0], m[0]), node)
        if isinstance(node, list):
            return [walk(x) for x in node]
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items() if k not in ("__inputs", "__requires")}
        return node

    return walk(json.loads(json.dumps(dash)))


def _datasource_refs(dash: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """Every place a datasource is named: panels, their targets, annotations, query variables."""
    refs = []
    for p in dash["panels"]:
        refs.append((f"panel {p['title']!r}", p["datasource"]))
        refs += [(f"panel {p['title']!r} target {t['refId']}", t["datasource"]) for t in p["targets"]]
    refs += [(f"annotation {a['name']!r}", a["datasource"]) for a in dash["annotations"]["list"] if "builtIn" not in a]
    refs += [(f"variable {v['name']}", v["datasource"]) for v in dash["templating"]["list"] if v["type"] == "query"]
    return refs


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_dashboard_names_its_datasources_through_inputs_and_imports(path):
    """Importable into any Grafana: no fixed uid in any panel, target, annotation or query variable."""
    from finsent.alerts.dashboards import CH_UID, PROM_UID

    dash = json.loads(path.read_text())
    declared = {i["name"]: i["pluginId"] for i in dash["__inputs"]}
    assert declared == {"DS_CLICKHOUSE": "grafana-clickhouse-datasource", "DS_PROMETHEUS": "prometheus"}
    want = {"grafana-clickhouse-datasource": "${DS_CLICKHOUSE}", "prometheus": "${DS_PROMETHEUS}"}
    refs = _datasource_refs(dash)
    assert len(refs) >= 2 * len(dash["panels"])
    for where, ds in refs:
        if ds == {"type": "datasource", "uid": "-- Mixed --"}:  # a panel whose targets use both
            assert where.startswith("panel ") and "target" not in where
            continue
        assert ds["uid"] == want[ds["type"]], f"{path.name}: {where} names {ds}"
    used = set(_INPUT_REF.findall(path.read_text()))
    assert used <= set(declared), f"{path.name} uses undeclared inputs {used - set(declared)}"
    # mixed panels: each target still goes to an input of its own type
    for p in dash["panels"]:
        if p["datasource"]["uid"] == "-- Mixed --":
            assert len({t["datasource"]["uid"] for t in p["targets"]}) > 1
    # provisioned (no import): the datasource variables of the inputs' names resolve to the provisioned uids
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_CLICKHOUSE"]["type"] == variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_CLICKHOUSE"]["current"]["value"] == CH_UID
    assert variables["DS_PROMETHEUS"]["current"]["value"] == PROM_UID
    # imported into a Grafana whose datasources have other uids: every reference lands on the chosen ones
    with pytest.raises(ValueError, match="DS_PROMETHEUS"):
        grafana_import(dash, {"DS_CLICKHOUSE": "ch-7f3a"})
    imported = grafana_import(dash, {"DS_CLICKHOUSE": "ch-7f3a", "DS_PROMETHEUS": "prom-91bc"})
    text = json.dumps(imported)
    assert "${DS_" not in text and "__inputs" not in text
    for where, ds in _datasource_refs(imported):
        assert ds["uid"] in ("ch-7f3a", "prom-91bc", "-- Mixed --"), f"{path.name}: {where} -> {ds}"
    # the dashboard variables the queries need survive the import untouched
    assert text.count("${database}") == path.read_text().count("${database}") > 0
    assert imported["uid"] == dash["uid"] and [p["id"] for p in imported["panels"]] == [p["id"] for p in dash["panels"]]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])  # ids unique: Grafana keys panels by id


def test_provisioned_datasource_uids_match_the_dashboards():
    """The provisioned case resolves the inputs through fixed uids: both datasources files must carry them."""
    from finsent.alerts.dashboards import CH_UID, PROM_UID

    for f in (
        DEPLOY / "provisioning" / "datasources" / "finsent.yml",
        DEPLOY.parent / "compose/grafana/datasources.yml",
    ):
        uids = re.findall(r"^\s+uid: (\S+)$", f.read_text(), re.M)
        assert sorted(uids) == sorted([CH_UID, PROM_UID]), f


def _seed(store) -> dict[str, Any]:
    now = utcnow()
    items, i = [], 0
    for m in range(30):
        at = now - timedelta(minutes=30 - m)
        for topic, neg in (("banking", 6 if m >= 25 else 1), ("crypto", 5)):
            for k in range(10):
                negative = k < neg
                raw = RawItem(
                    id=f"g{i}",
                    source="test",
                    source_type="news",
                    text=f"{topic} story {i}",
                    title=None if k == 9 else f"{topic} headline {i}",
                    ingested_at=at,
                    url=f"https://news.example/{i}" if k % 2 else None,
                )
                probs = {"negative": 0.9 if negative else 0.05, "neutral": 0.05 if negative else 0.9, "positive": 0.05}
                # banking stories are about JPMorgan (the entity dashboard's mentions), with the item's sentiment
                ents = (
                    (
                        EntityMention(
                            "JPMorgan", 0, 8, "negative" if negative else "neutral", probs, "JPM", "JPMorgan Chase", 90
                        ),
                    )
                    if topic == "banking"
                    else ()
                )
                items.append(ScoredItem(raw, "negative" if negative else "neutral", probs, topic, 0.9, "m1", at, ents))
                i += 1
    store.insert_scored(items)
    # the first 100 items re-scored by a model m2 with the same verdicts, as `finsent rescore` writes them
    # (the new rows, and both scores in the history: the compare panel's two versions)
    rescored = [replace(it, model_version="m2", scored_at=now) for it in items[:100]]
    store.insert_score_history([schema.score_row(x) for x in items[:100] + rescored])
    store.insert_scored(rescored)
    alert = topic_alert(now)
    store.insert_alerts([alert, entity_alert(now)])
    return {"now": now, "items": items, "alert": alert}


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["chdb", "clickhouse"])
def test_every_dashboard_sql_query_runs_on_the_real_schema(engine, request):
    url = request.getfixturevalue("chdb_db_url" if engine == "chdb" else "clickhouse_db_url")
    store = open_store(url)
    try:
        store.ensure_schema()
        seeded = _seed(store)
        db = store.database  # type: ignore[attr-defined]
        now = seeded["now"]
        results = {}
        for name, sql in sql_queries():
            q = expand_sql(sql, db, now - timedelta(hours=1), now + timedelta(minutes=1), 300, ["banking", "crypto"])
            results[sql] = store.query(q)
            assert results[sql], f"{engine}: {name} returned no rows:\n{q}"
    finally:
        store.close()
    from finsent.alerts import dashboards as d

    shares = {(r[0], r[1]): r[2] for r in results[d.SQL_NEGATIVE_SHARE]}
    assert all(0.0 <= v <= 1.0 for v in shares.values())
    assert max(v for (_, t), v in shares.items() if t == "banking") >= 0.5  # the seeded spike shows
    assert {r[0] for r in results[d.SQL_TOPICS]} == {"banking", "crypto"}
    top = results[d.SQL_TOP_NEGATIVE]
    assert len(top) == 50 and all(r[3] > 0.89 for r in top)  # only negative items, most negative first
    assert any(r[5].startswith("https://news.example/") for r in top) and all(r[2] for r in top)
    (anno,) = results[d.SQL_ALERT_ANNOTATIONS]
    assert anno[2] == "warning spike on banking: 60% negative vs 10% baseline (ewma_z)" and anno[3] == "banking"
    assert results[d.SQL_ALERTS_TABLE][0][1:4] == ("banking", "warning", "ewma_z")
    counts = results[d.SQL_SENTIMENT_COUNTS]
    assert sum(r[1] + r[2] + r[3] for r in counts) == len(seeded["items"])
    assert {r[0] for r in results[d.SQL_VERSIONS]} == {"m1", "m2"}
    # the entity dashboard: JPMorgan's mentions are the banking items, by their sentiment
    banking = [it for it in seeded["items"] if it.topic == "banking"]
    series = results[d.SQL_ENTITY_SERIES]
    assert sum(r[1] for r in series) == sum(it.sentiment == "negative" for it in banking)
    assert sum(r[1] + r[2] + r[3] for r in series) == len(banking)
    assert sum(r[1] for r in results[d.SQL_ENTITY_BUZZ]) == len(banking)
    assert all(-1.0 <= r[1] < 0 for r in results[d.SQL_ENTITY_NET])  # more negative than positive
    assert [r[0] for r in results[d.SQL_ENTITIES]] == ["JPM"]
    stories = results[d.SQL_ENTITY_STORIES]
    assert len(stories) == 50 and all("banking" in r[1] for r in stories)
    assert results[d.SQL_ENTITY_ALERTS][0][1:4] == ("JPMorgan Chase", "JPM", "warning")
    assert results[d.SQL_ALL_ENTITY_ALERTS][0][1] == "JPMorgan Chase"
    assert "negative surge about JPMorgan Chase" in results[d.SQL_ENTITY_ALERT_ANNOTATIONS][0][2]
    compared = {r[0]: r[1:] for r in results[d.SQL_COMPARE]}  # topic -> (items, share under m1, share under m2)
    rescored = seeded["items"][:100]
    for topic in ("banking", "crypto"):
        mine = [it for it in rescored if it.topic == topic]
        share = sum(it.sentiment == "negative" for it in mine) / len(mine)
        assert compared[topic][0] == len(mine) and compared[topic][1] == pytest.approx(share)
        assert compared[topic][2] == pytest.approx(share)  # same verdicts under m2


@pytest.mark.integration
def test_every_dashboard_promql_expression_runs_on_prometheus(prometheus_factory):
    from finsent.alerts.sinks import spike_gauges
    from finsent.stream.metrics import worker_metrics

    m = worker_metrics()
    score, active = spike_gauges()
    from finsent.alerts.entity_agent import entity_metrics

    em = entity_metrics()
    port = free_port()
    start_http_server(port, addr="127.0.0.1")  # the default registry, as `finsent worker` serves it
    prom = prometheus_factory(
        f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [finsent-rules.yml]
scrape_configs:
  - job_name: finsent-worker
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
""",
        files={"finsent-rules.yml": RULES_PATH.read_text()},
    )
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:  # worker-like traffic for a few scrapes
        for topic in ("banking", "crypto"):
            m.scored.labels(topic=topic, sentiment="negative").inc(2)
            m.scored.labels(topic=topic, sentiment="neutral").inc(8)
            score.labels(topic=topic).set(1.5)
            active.labels(topic=topic).set(0)
        m.consumed.labels(kafka_topic="finsent.raw").inc(20)
        m.stored.inc(20)
        m.dead_lettered.labels(reason="not_json").inc()
        m.store_retries.inc(0)
        m.batch_size.observe(20)
        m.inference_seconds.observe(0.02)
        m.store_seconds.observe(0.01)
        m.end_to_end_seconds.observe(0.3)
        m.consumer_lag.labels(kafka_topic="finsent.raw", partition="0").set(5)
        em.mentions.labels(sentiment="negative").inc(3)
        em.tracked.set(40)
        em.active.labels("JPMorgan Chase", "JPM").set(1)
        em.alerts.labels(severity="warning").inc(0)
        time.sleep(0.5)
    must_have_data = {
        "share_short",
        "stream_score",
        "stream_active",
        "scored_rate",
        "consumed_rate",
        "stored_rate",
        "dead_letter_rate",
        "lag",
        "latency_p50",
        "latency_p99",
        "inference_p95",
        "store_p95",
        "batch_mean",
        "entity_mentions_rate",
        "entities_tracked",
        "entity_alerting",
    }
    from finsent.alerts.dashboards import PROMQL

    by_expr = {v: k for k, v in PROMQL.items()}
    for name, expr in promql_queries():
        q = expr.replace("$topic", "banking|crypto").replace("$__rate_interval", "5s")
        result = prom.query(q)  # raises on a syntax or evaluation error
        key = by_expr.get(expr)
        if key in must_have_data:
            assert result, f"{name} ({key}) returned nothing: {q}"
            assert all(r["value"][1] not in ("NaN", "+Inf") for r in result), f"{name}: {result}"
    # the rule's baseline (1h, offset 5m) and ALERTS need history: they must parse and run, and be empty
    for key in ("share_long", "zscore"):
        assert prom.query(PROMQL[key].replace("$topic", "banking|crypto")) == []


def test_expand_sql_matches_the_plugin_macros():
    frm, to = datetime.fromtimestamp(1_700_000_000).astimezone(), datetime.fromtimestamp(1_700_003_600).astimezone()
    out = expand_sql(
        "SELECT $__interval_s FROM ${database}.t WHERE $__timeFilter(ts) AND topic IN "
        "(${topic:singlequote}) AND x > $__fromTime",
        "db1",
        frm,
        to,
        60,
        ["a", "b"],
    )
    assert out == (
        "SELECT 60 FROM db1.t WHERE ts >= toDateTime(1700000000) AND ts <= toDateTime(1700003600) "
        "AND topic IN ('a','b') AND x > toDateTime(1700000000)"
    )
    with pytest.raises(AssertionError, match="unexpanded"):
        expand_sql("SELECT $__unknown", "db", frm, to, 60, [])
