"""Typed settings for every finsent component, in one section per stage.

``Settings`` is composed of sections, one per stage: ``settings.kafka`` (:class:`KafkaSettings`: every
Kafka client), ``settings.storage`` (:class:`StoreSettings`: ClickHouse), ``settings.model``
(:class:`ModelSettings`: the classifier), ``settings.model_registry`` (:class:`RegistrySettings`: versions,
hot reload, the promotion gate, MLflow), ``settings.worker`` (:class:`WorkerSettings`: batching, /metrics,
the data API), ``settings.ingest`` (:class:`IngestSettings`), ``settings.alerts`` (:class:`AlertSettings`),
``settings.entities`` (:class:`EntitySettings`) and ``settings.drift`` (:class:`DriftSettings`); ``log_level``
is the process's own. A stage takes only its section (the Kafka client builders take a ``KafkaSettings``, not
the Grafana URLs and Mastodon tokens too), the same way aiokafka and httpx take one config object per
client. Sections are frozen; :meth:`Settings.model_copy` takes flat names (``update={"brokers": ...}``).

Precedence, lowest to highest: defaults < config file (TOML, YAML or JSON, from ``--config`` or
``FINSENT_CONFIG``) < environment variables ``FINSENT_<FIELD>`` < command-line flags (passed as
``overrides`` by the CLI). Secrets are :class:`pydantic.SecretStr` so they never appear in
``repr``/logs; :meth:`Settings.redacted` is what gets logged.

The names stay flat (``FINSENT_BATCH_MAX``, not ``FINSENT_WORKER__BATCH_MAX``) because that is what people
type in systemd units and Kubernetes manifests: every field name is unique across the sections, so a flat
name (variable, file key, flag) belongs to exactly one section. A settings file may use the flat names or
section tables (``[kafka]`` / ``kafka:`` with the same names inside). The section attributes are named so
that none equals a field name (``storage`` holds ``store``, ``model_registry`` holds ``registry``).

Code reads ``settings.<section>.<field>`` (``settings.kafka.brokers``), or takes the one section it needs; a
flat name on the whole settings (``settings.brokers``) is an AttributeError.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from finsent.core.errors import ConfigError
from finsent.core.events import MAX_MESSAGE_BYTES, MAX_TEXT_CHARS
from finsent.core.redact import redact_url

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "finsent"

ModelVariant = Literal["auto", "fp32", "int8", "fp16"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"]
AlertDetectorName = Literal["ewma_z", "cusum"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def default_cache_dir() -> Path:
    """``$FINSENT_CACHE_DIR``, else ``$XDG_CACHE_HOME/finsent``, else ``~/.cache/finsent``: derived model variants."""
    if os.environ.get("FINSENT_CACHE_DIR"):
        return Path(os.environ["FINSENT_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finsent"


def _upper(v: Any) -> Any:
    """Kafka's choices and log levels are case-insensitive where Kafka's own tools are."""
    return v.upper() if isinstance(v, str) else v


def _redact_values(model: BaseModel) -> dict[str, Any]:
    """``model``'s values safe to log: secrets masked, and every URL-valued setting (any string with ``://``:
    the store, Alertmanager, MLflow...) through the one :func:`~finsent.core.redact.redact_url`."""
    d = model.model_dump()
    for k, v in d.items():
        if isinstance(getattr(model, k), SecretStr):
            d[k] = "***" if v else None
        elif isinstance(v, str) and "://" in v:
            d[k] = redact_url(v)
    return d


class _Section(BaseModel):
    """One stage's settings: frozen (a stage cannot change another's view), unknown names refused (the
    loader has already warned about and dropped them, so one here is a caller's bug)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    #: the section's title in ``finsent config`` and docs/configuration.md
    title: ClassVar[str] = ""

    def redacted(self) -> dict[str, Any]:
        """This section's values, safe to log (see :meth:`Settings.redacted`)."""
        return _redact_values(self)


class KafkaSettings(_Section):
    """Every Kafka client: producers, the Faust worker, admin."""

    title: ClassVar[str] = "Kafka (every client: producers, the Faust worker, admin)"

    brokers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port")
    topic_raw: str = Field("finsent.raw", description="topic of the ingested items (keyed by item id)")
    topic_scored: str = Field("finsent.scored", description="topic of the scored items")
    topic_dlq: str = Field("finsent.dlq", description="dead letters: records that could not be decoded, with a reason")
    topic_alerts: str = Field(
        "finsent.alerts", description="alerts; also the prefix of the detectors' internal count topics"
    )
    partitions: int = Field(4, ge=1, description="partitions for topics finsent creates (the unit of scale-out)")
    replication_factor: int = Field(1, ge=1, description="replicas of each topic finsent creates")
    consumer_group: str = Field("finsent-worker", description="the workers' Kafka consumer group")
    session_timeout_ms: int = Field(10_000, ge=1000, description="Tansu waits ~half of this on a group join")
    security_protocol: SecurityProtocol = Field("PLAINTEXT", description="Kafka security protocol")
    sasl_mechanism: SaslMechanism | None = Field(None, description="SASL mechanism (with SASL_*)")
    sasl_username: str | None = Field(None, description="SASL user name")
    sasl_password: SecretStr | None = Field(None, description="SASL password")
    ssl_cafile: str | None = Field(None, description="CA bundle that signed the brokers' certificates")
    max_message_bytes: int = Field(
        MAX_MESSAGE_BYTES, ge=1024, description="largest Kafka record finsent produces or accepts"
    )

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper_choices(cls, v: Any) -> Any:
        return _upper(v)

    @field_validator("brokers")
    @classmethod
    def _check_brokers(cls, v: str) -> str:
        parts = [p.strip() for p in v.split(",") if p.strip()]
        if not parts or not all(re.fullmatch(r"[\w.\-\[\]:]+:\d{1,5}", p) for p in parts):
            raise ValueError(f"brokers must be host:port[,host:port...], got {v!r}")
        return ",".join(parts)

    @property
    def topic_alert_counts(self) -> str:
        """The in-stream detector's internal topic of per-window counts (declared with the others)."""
        return f"{self.topic_alerts}.counts"

    @property
    def topic_entity_counts(self) -> str:
        """The entity agent's internal topic of mentions re-keyed by entity (declared with the others)."""
        return f"{self.topic_alerts}.entity_counts"

    @property
    def broker_list(self) -> list[str]:
        return self.brokers.split(",")


class StoreSettings(_Section):
    """The ClickHouse store (a server or the embedded chdb)."""

    title: ClassVar[str] = "Store (ClickHouse)"

    store: str = Field(
        f"chdb://{DEFAULT_DATA_DIR / 'chdb'}",
        description="clickhouse://user:pass@host:9000/db for a server, chdb:///path for the embedded engine",
    )
    retention_days: int = Field(0, ge=0, description="TTL on stored items where the server supports it; 0 = keep")
    clickhouse_cluster: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="cluster name (remote_servers): ON CLUSTER DDL, Replicated *_local tables, Distributed tables",
    )

    @field_validator("store")
    @classmethod
    def _check_store(cls, v: str) -> str:
        if not v.startswith(("clickhouse://", "chdb://")):
            raise ValueError("store must start with clickhouse:// (a server) or chdb:// (embedded)")
        return v


class ModelSettings(_Section):
    """The classifier: which model, which variant, and how it runs."""

    title: ClassVar[str] = "Model (the classifier)"

    model_dir: str | None = Field(None, description="model directory; default: the model shipped with finsent")
    model_variant: ModelVariant = Field("auto", description="auto: fp16 on CUDA, int8 on CPU")
    model_threads: int = Field(
        0,
        ge=0,
        description="onnxruntime intra-op threads per model call; 0 = the cores shared out among the model_calls",
    )
    model_calls: int = Field(
        2,
        ge=1,
        le=16,
        description="model calls a worker runs at once, each on its own batch (one call's Python overlaps the other's "
        "onnxruntime run; on CPU two single-thread calls beat one two-thread call: bench/RESULTS.md)",
    )
    model_cache_size: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="recent predictions kept for repeated texts (re-posts, syndicated headlines); 0 = off",
    )
    model_spinning: bool = Field(
        False, description="let onnxruntime's threads spin-wait between operators (faster only on idle cores)"
    )
    cache_dir: str = Field(
        default_factory=lambda: str(default_cache_dir()),
        description="derived model variants, and each running worker's Faust data directory (faust/PID-*)",
    )
    max_text_chars: int = Field(MAX_TEXT_CHARS, ge=100, description="text longer than this is cut before scoring")

    @property
    def call_threads(self) -> int:
        """onnxruntime intra-op threads of each of the worker's ``model_calls``: ``model_threads``, else the
        cores this process may use shared out (at least one each)."""
        return self.model_threads or max(1, usable_cores() // self.model_calls)


class RegistrySettings(_Section):
    """Model versions: the registry, the workers' hot reload, the promotion gate, MLflow."""

    title: ClassVar[str] = "Model registry and retraining (finsent.models.registry, finsent retrain)"

    registry: str | None = Field(
        str(DEFAULT_DATA_DIR / "registry"),
        description="model registry directory (versions + production/candidate aliases); empty = none. When its "
        "production alias is set, workers and `finsent rescore` use that version and FINSENT_MODEL_DIR is only the "
        "fallback (a worker also follows the alias: hot reload); empty pins FINSENT_MODEL_DIR",
    )
    reload_interval_s: float = Field(
        30.0, gt=0, description="how often a worker polls the production alias (hot reload between batches)"
    )
    gate_tolerance: float = Field(
        0.005, ge=0.0, le=1.0, description="promotion gate: largest allowed macro-F1 drop on any frozen task"
    )
    gate_min_gain: float = Field(
        0.0, ge=0.0, le=1.0, description="promotion gate: some frozen task must gain more than this (macro-F1)"
    )
    gate_int8_max_drop: float = Field(
        0.005, ge=0.0, le=1.0, description="promotion gate: int8 may trail the candidate's fp32 by at most this"
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="log each retrain to this MLflow tracking URI (e.g. sqlite:///mlflow.db); needs mlflow"
    )
    mlflow_model_name: str = Field("finsent", min_length=1, description="MLflow registered model of the versions")


class WorkerSettings(_Section):
    """The stream worker: batching, its /metrics /healthz /readyz endpoint and data API."""

    title: ClassVar[str] = "Stream worker"

    batch_max: int = Field(128, ge=1, description="largest batch the worker scores at once")
    batch_within_s: float = Field(0.25, gt=0, description="longest wait to fill a batch")
    metrics_host: str = Field("127.0.0.1", description="address of /metrics, /healthz, /readyz and the data API")
    metrics_port: int = Field(9464, ge=0, le=65535, description="worker /metrics port; 0 = off")
    api_token: SecretStr | None = Field(
        None, description="bearer token of the worker's data API (/v1/*); unset = that API answers on loopback only"
    )


class IngestSettings(_Section):
    """The ingesters: feeds, social APIs, file replay, the HTTP push endpoint, dedup, publishing."""

    title: ClassVar[str] = "Ingest"

    ingest_state_dir: str = Field(str(DEFAULT_DATA_DIR / "ingest"), description="dedup store of the ingesters")
    ingest_user_agent: str = Field(
        "finsent/0.1 (+https://github.com/finsent/finsent)", description="User-Agent of feed and API fetches"
    )
    http_token: SecretStr | None = Field(None, description="bearer token for `finsent ingest http`")
    http_header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="push endpoint: request headers complete within this (also keep-alive idle)"
    )
    http_body_timeout_s: float = Field(30.0, gt=0, le=3600, description="push endpoint: body complete within this")
    http_max_connections: int = Field(
        1000, ge=1, le=100_000, description="push endpoint: open connections at most; more get 503 at once"
    )
    ingest_dedup_max_keys: int = Field(2_000_000, ge=1000, description="dedup keys kept on disk (oldest dropped)")
    ingest_dedup_ttl_days: float = Field(30.0, gt=0, description="dedup keys older than this are forgotten")
    ingest_fetch_timeout_s: float = Field(20.0, gt=0, description="whole-request timeout of one feed/API fetch")
    ingest_max_fetch_bytes: int = Field(10_000_000, ge=1024, description="largest feed/API response read")
    ingest_interval_s: float = Field(300.0, gt=0, description="default poll interval per feed/API source")
    publish_timeout_s: float = Field(
        30.0, gt=0, description="how long an ingester waits for Kafka to acknowledge before it gives up"
    )
    mastodon_token: SecretStr | None = Field(None, description="optional Mastodon access token (public timelines)")
    reddit_token: SecretStr | None = Field(None, description="Reddit OAuth bearer token; uses oauth.reddit.com")
    bluesky_token: SecretStr | None = Field(None, description="Bluesky access JWT for searchPosts (optional)")


class AlertSettings(_Section):
    """The per-topic spike detector in the worker, and where alerts go."""

    title: ClassVar[str] = "Alerts (the in-stream topic detector)"

    alert_window_s: int = Field(60, ge=1, description="tumbling window of the in-stream detector")
    alertmanager_url: str | None = Field(None, description="post alerts to this Alertmanager (v2 API) when set")
    # defaults measured by `finsent bench alerts` (bench/RESULTS.md, Alerts)
    alert_detector: AlertDetectorName = Field("ewma_z", description="in-stream detector: ewma_z (z-test) or cusum")
    alert_threshold: float | None = Field(None, gt=0, description="alarm at z (ewma_z, default 5.0) or LLR (cusum, 12)")
    alert_short_s: int = Field(300, ge=1, description="ewma_z: the recent window tested against the baseline")
    alert_baseline_halflife_s: int = Field(3600, ge=1, description="half-life of a topic's EWMA baseline share")
    alert_drift_var: float = Field(
        0.02, ge=0.0, description="ewma_z: variance (logit units) of a topic's drift away from its baseline; widens z"
    )
    alert_min_ratio: float = Field(2.0, ge=1.0, description="negative share must reach this multiple of baseline")
    alert_min_delta: float = Field(0.1, ge=0.0, le=1.0, description="and exceed the baseline by this much")
    alert_min_volume: int = Field(30, ge=1, description="items in the tested window below which nothing alarms")
    alert_dashboard_url: str = Field(
        "http://localhost:3000/d/finsent-alerts/finsent-alerts", description="Grafana dashboard linked from alerts"
    )


class EntitySettings(_Section):
    """Entity alerts: finsent.alerts.entity_agent runs finsent.alerts.entity_detector in the worker."""

    title: ClassVar[str] = "Entity alerts (the per-entity detector in the worker)"

    entity_alerts: bool = Field(True, description="run the per-entity negative-surge detector in the worker")
    entity_bucket_s: int = Field(3600, ge=1, description="entity detector: bucket of event time")
    entity_window_buckets: int = Field(6, ge=1, description="entity detector: buckets tested against the baseline")
    entity_lateness_s: int = Field(
        3600, ge=0, description="entity detector: how far behind the newest event time a mention may still count"
    )
    entity_cooldown_s: int = Field(86_400, ge=0, description="entity alerts: quiet time before a name re-arms")
    entity_watchlist: str | None = Field(None, description="watchlist file (CSV or JSON lines), reloaded on change")
    entity_watch_mode: Literal["only", "wider"] = Field(
        "wider", description="with a watchlist: alert on listed names only, or on all with stricter bars off it"
    )
    entity_dashboard_url: str = Field(
        "http://localhost:3000/d/finsent-entities/finsent-entities", description="Grafana dashboard linked from alerts"
    )


class DriftSettings(_Section):
    """Drift: finsent drift, the worker's finsent_drift_* gauges (finsent.stream.drift)."""

    title: ClassVar[str] = "Drift (finsent drift, the worker's finsent_drift_* gauges)"

    drift_interval_s: float = Field(300.0, ge=0, description="how often a worker recomputes the drift gauges; 0 = off")
    drift_window_s: int = Field(86_400, ge=60, description="drift: the recent period compared (default 24h)")
    drift_reference_s: int = Field(7 * 86_400, ge=60, description="drift: the reference period just before it (7d)")
    drift_psi_threshold: float = Field(
        0.25, gt=0, description="retrain advised when a task's label PSI reaches this (0.1 moderate, 0.25 large)"
    )
    drift_confidence_drop: float = Field(
        0.05, ge=0, le=1, description="retrain advised when mean confidence fell by this much vs the reference"
    )
    drift_low_confidence: float = Field(
        0.5, gt=0, le=1, description="an item is low-confidence when its top sentiment probability is below this"
    )
    drift_low_confidence_rise: float = Field(
        0.1, ge=0, le=1, description="retrain advised when the low-confidence share rose by this vs the reference"
    )
    drift_min_items: int = Field(200, ge=1, description="drift: fewest items in each period for a verdict")


#: section attribute of :class:`Settings` -> its model, in the order ``finsent config`` prints them
SECTIONS: dict[str, type[_Section]] = {
    "kafka": KafkaSettings,
    "storage": StoreSettings,
    "model": ModelSettings,
    "model_registry": RegistrySettings,
    "worker": WorkerSettings,
    "ingest": IngestSettings,
    "alerts": AlertSettings,
    "entities": EntitySettings,
    "drift": DriftSettings,
}

#: flat setting name (``FINSENT_<NAME>``, file key, flag) -> the section attribute that holds it
SECTION_OF: dict[str, str] = {name: section for section, model in SECTIONS.items() for name in model.model_fields}


class _FlatEnv(PydanticBaseSettingsSource):
    """``FINSENT_<FIELD>`` variables (names case-insensitive, as before), each put into its field's section."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False  # unused: __call__ reads the environment once for every field

    def __call__(self) -> dict[str, Any]:
        env = {k.upper(): v for k, v in os.environ.items() if k.upper().startswith("FINSENT_")}
        out: dict[str, Any] = {}
        for name in Settings.flat_fields():
            value = env.get(_env_name(name))
            if value is None:
                continue
            section = SECTION_OF.get(name)
            if section is None:
                out[name] = value
            else:
                out.setdefault(section, {})[name] = value
        return out


def _group(values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat names put into their sections: ``{"brokers": x}`` -> ``{"kafka": {"brokers": x}}``. A flat name
    beats the same name inside a section mapping given alongside it (flags are flat and beat the rest)."""
    out: dict[str, Any] = {}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECTION_OF:
            flat[key] = value
        else:
            out[key] = value
    for key, value in flat.items():
        section = SECTION_OF[key]
        current = out.get(section)
        if isinstance(current, BaseModel):
            current = current.model_dump()
        elif isinstance(current, Mapping):
            current = dict(current)
        else:
            current = {}  # absent (or not a mapping: then the flat names are what there is)
        current[key] = value
        out[section] = current
    return out


class Settings(BaseSettings):
    """Every setting, one section per stage (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="FINSENT_", extra="ignore", validate_default=True, frozen=True)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    storage: StoreSettings = Field(default_factory=StoreSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    model_registry: RegistrySettings = Field(default_factory=RegistrySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    entities: EntitySettings = Field(default_factory=EntitySettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)

    log_level: LogLevel = Field("INFO", description="log level of every finsent process")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: Any) -> Any:
        return _upper(v)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments beat ``FINSENT_*`` variables; the variables keep their flat names."""
        return init_settings, _FlatEnv(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        """``Settings(brokers=...)`` and ``Settings(kafka={...})`` alike: flat names go to their section."""
        return _group(data) if isinstance(data, Mapping) else data

    @classmethod
    def flat_fields(cls) -> dict[str, FieldInfo]:
        """Every setting by its flat name (``FINSENT_<NAME>`` upper-cased), in section order."""
        out: dict[str, FieldInfo] = {}
        for model in SECTIONS.values():
            out.update(model.model_fields)
        out["log_level"] = cls.model_fields["log_level"]
        return out

    def flat(self) -> dict[str, Any]:
        """Every value by its flat name (what ``FINSENT_<NAME>`` would say), secrets as :class:`SecretStr`."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            part = getattr(self, section)
            out.update({name: getattr(part, name) for name in type(part).model_fields})
        out["log_level"] = self.log_level
        return out

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Settings:
        """A copy with some values replaced; ``update`` takes flat names (``{"brokers": x}``) or whole sections.
        Like pydantic's, the new values are not validated (use :func:`load_settings` or ``Settings(...)``)."""
        if not update:
            return super().model_copy(deep=deep)
        top: dict[str, Any] = {k: v for k, v in update.items() if k not in SECTION_OF}
        per_section: dict[str, dict[str, Any]] = {}
        for key, value in update.items():
            if key in SECTION_OF:
                per_section.setdefault(SECTION_OF[key], {})[key] = value
        for section, values in per_section.items():
            base = top.get(section, getattr(self, section))
            top[section] = base.model_copy(update=values)
        return super().model_copy(update=top, deep=deep)

    def redacted(self) -> dict[str, Any]:
        """Settings safe to log, grouped by section (``{"kafka": {"brokers": ...}, ...}``, what ``finsent
        config`` prints): secrets masked, and every URL-valued setting (any string with ``://``: the store,
        Alertmanager, MLflow...) through the one :func:`~finsent.core.redact.redact_url`."""
        out: dict[str, Any] = {section: getattr(self, section).redacted() for section in SECTIONS}
        out["log_level"] = self.log_level
        return out


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a container's cpuset), not the host's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


#: how to fix a value that does not load; it never points at `finsent config`, which fails the same way
FIX_HINT = "fix the value named; a flag beats the environment, which beats the file"
FILE_HINT = "fix --config or FINSENT_CONFIG"


def _file_format(path: Path, text: str) -> str:
    """``TOML``, ``JSON`` or ``YAML``: by the extension (``.toml``, ``.json``, ``.yaml``/``.yml``); a file
    with no or another extension (compose mounts ``/run/secrets/finsent``) by its first line that is not a
    comment: ``{`` is JSON, ``[table]`` or ``name = value`` is TOML, anything else YAML."""
    suffix = path.suffix.lower()
    if suffix in (".toml", ".json"):
        return suffix[1:].upper()
    if suffix in (".yaml", ".yml"):
        return "YAML"
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")), "")
    if first.startswith("{"):
        return "JSON"
    if re.fullmatch(r"\[[\w.\"' -]+\]", first) or re.match(r"""^("[^"]*"|'[^']*'|[\w-]+)\s*=""", first):
        return "TOML"
    return "YAML"


def _key_lines(text: str, fmt: str) -> dict[str, int]:
    """Setting name -> the line of the file that sets it (first one), so that errors and warnings name it.

    Names are flat; a name inside a section table is keyed ``section.name`` as well as ``name``, and the
    table's own line by ``section``. YAML from the parser's marks; TOML and JSON by matching ``name =`` /
    ``"name":`` lines (their parsers keep no positions), top level or under ``[finsent]`` / ``"finsent": {``.
    """
    lines: dict[str, int] = {}
    if fmt == "YAML":
        import yaml

        try:
            node = yaml.compose(text)
        except yaml.YAMLError:
            return lines
        if isinstance(node, yaml.MappingNode):
            pairs = node.value
            inner = next(
                (v for k, v in pairs if getattr(k, "value", None) == "finsent" and isinstance(v, yaml.MappingNode)),
                None,
            )
            for key, value in inner.value if inner is not None else pairs:
                lines.setdefault(str(key.value), key.start_mark.line + 1)
                if str(key.value).lower() in SECTIONS and isinstance(value, yaml.MappingNode):
                    for sub, _ in value.value:
                        lines.setdefault(f"{str(key.value).lower()}.{sub.value}", sub.start_mark.line + 1)
                        lines.setdefault(str(sub.value), sub.start_mark.line + 1)
        return lines
    if fmt == "TOML":
        table: str | None = None
        for number, line in enumerate(text.splitlines(), 1):
            head = re.match(r"^\s*\[\s*([^\]]+?)\s*\]", line)
            if head:
                table = head.group(1).strip("\"'").lower()
                table = table.removeprefix("finsent.") if table != "finsent" else table
                if table in SECTIONS:
                    lines.setdefault(table, number)
                continue
            m = re.match(r"""^\s*(?:"([^"]+)"|'([^']+)'|([\w-]+))\s*=""", line)
            if not m:
                continue
            name = next(g for g in m.groups() if g is not None)
            if table in (None, "finsent"):
                lines.setdefault(name, number)
            elif table in SECTIONS:
                lines.setdefault(f"{table}.{name}", number)
                lines.setdefault(name, number)
        return lines
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"\s*:', text):  # JSON
        lines.setdefault(m.group(1), text.count("\n", 0, m.start()) + 1)
    return lines


class _File:
    """A settings file read: its values, format and the line of each name (for messages)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: dict[str, Any] = {}
        self.lines: dict[str, int] = {}
        self.format = "TOML"

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.path}, line {line}" if line else f"{self.path}"


def _read_file(path: Path) -> _File:
    """Parse a settings file by its format (see :func:`_file_format`); every failure is a :class:`ConfigError`
    that names the file and, where the parser knows it, the line."""
    out = _File(path)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:  # a name too long
        raise ConfigError(
            f"config file {str(path)[:200]} cannot be read: {exc.strerror or exc}", hint=FILE_HINT
        ) from None
    if not exists:
        raise ConfigError(f"config file {path} does not exist", hint=FILE_HINT)
    if is_dir:
        raise ConfigError(f"config file {path} is a directory, not a file", hint=FILE_HINT)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})", hint=FILE_HINT) from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}", hint=FILE_HINT) from None
    out.format = fmt = _file_format(path, text)
    try:
        if fmt == "JSON":
            data = json.loads(text) if text.strip() else {}
        elif fmt == "YAML":
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}", hint="fix the line named") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file {path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            hint="fix the line named",
        ) from None
    except (ValueError, RecursionError) as exc:  # json/toml: nesting too deep, a number too long
        raise ConfigError(f"config file {path}: invalid {fmt}: {exc}", hint="fix the file") from None
    except Exception as exc:  # yaml.YAMLError: the mark says where
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {path}: invalid YAML{where}: {problem}", hint="fix the line named") from None
    if isinstance(data, dict) and isinstance(data.get("finsent"), dict):
        data = data["finsent"]
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of settings (name: value), not {type(data).__name__}",
            hint=FILE_HINT,
        )
    out.values = {str(k): v for k, v in data.items()}
    out.lines = _key_lines(text, fmt)
    return out


def _env_name(field: str) -> str:
    return f"FINSENT_{field}".upper()


#: FINSENT_* variables that are not settings but are read elsewhere (so they are not "unknown").
OTHER_ENV = frozenset({"FINSENT_CONFIG", "FINSENT_CACHE_DIR", "FINSENT_ENTITIES_FILE"})  # the last: models.linking


def _explain(exc: ValidationError, file: _File | None, file_keys: set[str]) -> str:
    """Pydantic's errors as ``FINSENT_BATCH_MAX=0: Input should be ...`` (or, for a value from the settings
    file, ``config file FILE, line N: batch_max=0: ...``), one clause each, no URL. An error inside a
    section (``loc`` ``("worker", "batch_max")``) is named by the setting's flat name."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        field = loc[1] if len(loc) > 1 and loc[0] in SECTIONS else (loc[0] if loc else "?")
        from_file = file is not None and field in file_keys
        value = err.get("input")
        shown = "" if isinstance(value, dict) or value is None else f"={value!r}"
        msg = err["msg"]
        if err.get("type") == "literal_error":
            msg = "must be one of " + msg.split("Input should be ", 1)[-1]
        if from_file and file is not None:
            parts.append(f"config file {file.where(field)}: {field}{shown}: {msg}")
        else:
            parts.append(f"{_env_name(field)}{shown}: {msg}")
    return "; ".join(parts)


def _warn_unknown(name: str, known: list[str], where: str, shown: str | None = None) -> None:
    close = difflib.get_close_matches(name, known, n=1)
    log.warning(
        "%sunknown setting %s is ignored%s", where, shown or name, f" (did you mean {close[0]}?)" if close else ""
    )


def _file_settings(file: _File) -> dict[str, Any]:
    """The file's values by flat name: top-level names, and names inside section tables (``[kafka]``).

    Unknown names are warned about (with the closest real name) and dropped; a name in another section's
    table is read all the same, with a warning naming its section; a name set twice is an error.
    """
    known = sorted(Settings.flat_fields())
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def take(key: str, value: Any, table: str | None) -> None:
        name = key.lower()  # names are case-insensitive, as in the environment
        where_key = f"{table}.{key}" if table else key
        if name not in known:
            _warn_unknown(key, known, f"config file {file.where(where_key)}: ", shown=where_key)
            return
        if name in values:
            raise ConfigError(
                f"config file {file.where(where_key)}: {name} is set twice (also as {origin[name]})",
                hint="keep one of the two",
            )
        if table is not None and SECTION_OF.get(name) != table:
            home = SECTION_OF.get(name)
            log.warning(
                "config file %s: %s belongs %s; read all the same",
                file.where(where_key),
                name,
                f"in [{home}]" if home else "at the top level",
            )
        values[name] = value
        origin[name] = where_key
        line = file.lines.get(where_key) or file.lines.get(key)
        if line is not None:
            file.lines[name] = line  # messages name the flat, lower-case name

    for key, value in file.values.items():
        if key.lower() in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"config file {file.where(key)}: {key} must be a table of settings ({key}: name: value), "
                    f"not {type(value).__name__}",
                    hint=FILE_HINT,
                )
            for sub, sub_value in value.items():
                take(str(sub), sub_value, key.lower())
        else:
            take(key, value, None)
    return values


def load_settings(config: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build the settings: file < env < overrides. ``None`` overrides are ignored (flag not given).
    Overrides take flat names (``brokers=...``), as flags do.

    Raises :class:`ConfigError` naming the variable (or the file, line and key) of every bad value.
    One rule for names that are no setting, in the environment (``FINSENT_*``) and in the file alike:
    a warning with the closest real name, and the value is ignored (a typo is seen, a variable meant
    for another version does not stop the process).
    """
    config = config or os.environ.get("FINSENT_CONFIG")
    file = _read_file(Path(config)) if config else None
    env_names = {_env_name(name) for name in Settings.flat_fields()}
    unknown_env = sorted(k for k in os.environ if k.startswith("FINSENT_") and k not in env_names | OTHER_ENV)
    for name in unknown_env:
        _warn_unknown(name, sorted(env_names), "")
    file_values = _file_settings(file) if file is not None else {}
    # env beats file: drop file values that the environment sets
    file_values = {k: v for k, v in file_values.items() if _env_name(k) not in os.environ}
    values = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return Settings(**values)
    except ValidationError as exc:
        from_flags = {k for k, v in overrides.items() if v is not None}
        raise ConfigError(_explain(exc, file, set(file_values) - from_flags), hint=FIX_HINT) from None
