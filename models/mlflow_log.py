"""Mirror retrains into MLflow (``FINSENT_MLFLOW_TRACKING_URI``), for teams that already run it.

The finsent registry stays the source of truth (workers follow it); MLflow gets a copy people can
browse and compare: each retrain is one run (parameters, frozen-set metrics, the card and the
model directory as artifacts), each registry version one version of the registered model
``FINSENT_MLFLOW_MODEL_NAME`` (tagged ``finsent_version``), and the ``production`` / ``candidate``
aliases are set on the MLflow versions that carry the same registry versions. ``finsent models
promote`` and ``rollback`` call :func:`sync_aliases` too, so the aliases never disagree for long.

mlflow (``pip install finsent[mlflow]``; mlflow-skinny plus SQLAlchemy is enough for an
``sqlite:///`` store) is imported only here, only when the setting is on.
"""

from __future__ import annotations

import contextlib
from typing import Any

from finsent.core.errors import ConfigError
from finsent.models.registry import ALIASES, Registry

EXPERIMENT = "finsent-retrain"
VERSION_TAG = "finsent_version"


def _client(uri: str) -> Any:
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(
            "FINSENT_MLFLOW_TRACKING_URI is set but mlflow is not installed", hint="pip install finsent[mlflow]"
        ) from None
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _flat_params(cfg: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            v = ",".join(f"{kk}={vv}" for kk, vv in v.items())
        elif isinstance(v, list):
            v = ",".join(map(str, v))
        out[k] = str(v)[:500]
    return out


def log_retrain(uri: str, registry: Registry, result: dict[str, Any], model_name: str = "finsent") -> dict[str, Any]:
    """Log ``result`` (the ``finsent retrain --json`` dict) as a run, register its version, set the aliases."""
    import mlflow

    client = _client(uri)
    mv = registry.get(result["version"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(EXPERIMENT)
    metrics = mv.metrics()
    train = metrics.get("train", {})
    with mlflow.start_run(experiment_id=exp_id, run_name=mv.version) as run:
        mlflow.log_params(
            _flat_params(
                {
                    **train.get("config", {}),
                    "parent": result.get("parent"),
                    "start": train.get("start"),
                    "device": train.get("device"),
                }
            )
        )
        mlflow.set_tags(
            {
                VERSION_TAG: mv.version,
                "gate": result["gate"]["decision"],
                "frozen_fingerprint": result.get("frozen_fingerprint", ""),
                "data_fingerprint": result.get("data_fingerprint", ""),
            }
        )
        values: dict[str, float] = {
            "minutes": float(result["minutes"]),
            "steps": float(result.get("steps", 0)),
            "promoted": float(result["promoted"]),
        }
        for name, m in result["metrics"].items():
            values[f"{name}_macro_f1"] = float(m["candidate"])
            values[f"{name}_int8_macro_f1"] = float(m["candidate_int8"])
            if m.get("production") is not None:
                values[f"{name}_production_macro_f1"] = float(m["production"])
        mlflow.log_metrics(values)
        mlflow.log_artifact(str(mv.path / "README.md"))
        mlflow.log_artifacts(str(mv.path), artifact_path="model")
        source = f"{run.info.artifact_uri}/model"
        run_id = run.info.run_id
    try:
        client.get_registered_model(model_name)
    except Exception:  # RestException / MlflowException: not there yet
        client.create_registered_model(model_name, description="finsent's sentiment + topic classifier (ONNX)")
    version = client.create_model_version(model_name, source, run_id=run_id, tags={VERSION_TAG: mv.version})
    sync_aliases(uri, registry, model_name)
    return {"run_id": run_id, "model_name": model_name, "model_version": str(version.version)}


def sync_aliases(uri: str, registry: Registry, model_name: str = "finsent") -> dict[str, str | None]:
    """Set each alias on the MLflow version tagged with the registry version it points at (or remove it)."""
    client = _client(uri)
    try:
        versions = client.search_model_versions(f"name='{model_name}'")
    except Exception:
        return {}
    by_tag = {v.tags.get(VERSION_TAG): str(v.version) for v in versions if v.tags.get(VERSION_TAG)}
    aliases = registry.aliases()
    out: dict[str, str | None] = {}
    for alias in ALIASES:
        target = by_tag.get(aliases.get(alias) or "")
        if target is not None:
            client.set_registered_model_alias(model_name, alias, target)
        else:
            with contextlib.suppress(Exception):  # the alias was not set
                client.delete_registered_model_alias(model_name, alias)
        out[alias] = target
    return out
