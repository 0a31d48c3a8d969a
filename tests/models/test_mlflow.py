"""MLflow mirroring against a real local MLflow store (``sqlite:///`` in a temp dir, no server): a retrain
is a run with params, metrics, the card and the model as artifacts; its registry version is an MLflow
model version with the same aliases, and ``finsent models promote`` / ``rollback`` move them there too."""

from __future__ import annotations

import json
from pathlib import Path

from finsent.cli import main
from finsent.models.registry import Registry
from finsent.models.testing import make_tiny_model
from tests.retrain_helpers import synthetic_sets


def test_retrain_is_logged_and_registered_in_mlflow_with_the_aliases(
    tmp_path: Path, chdb_db_url: str, monkeypatch, capsys
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # mlflow's default artifact root is relative to the working directory
    monkeypatch.setenv("FINSENT_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("FINSENT_STORE", chdb_db_url)
    monkeypatch.setenv("FINSENT_MODEL_DIR", str(make_tiny_model(tmp_path / "tiny")))
    monkeypatch.setenv("FINSENT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FINSENT_MLFLOW_TRACKING_URI", uri)
    sent, topic = synthetic_sets(tmp_path / "data")
    out = tmp_path / "r.json"
    # --max-steps 0: the candidate is production's own weights, so the gate rejects it (no gain)
    args = ["retrain", "--data", str(sent), str(topic), "--max-steps", "0", "--no-labels", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["promoted"] is False and result["mlflow"]["model_name"] == "finsent"
    capsys.readouterr()

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result["mlflow"]["run_id"])
    assert run.data.tags["finsent_version"] == result["version"] and run.data.tags["gate"] == "reject"
    assert run.data.metrics["sent_macro_f1"] == result["metrics"]["sent"]["candidate"]
    assert run.data.metrics["promoted"] == 0.0 and "lr" in run.data.params and "batch_size" in run.data.params
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"README.md", "model"} <= artifacts
    assert {"model/model.onnx", "model/labels.json", "model/registry.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "model")
    }
    model = client.get_registered_model("finsent")
    assert model.aliases == {"candidate": int(result["mlflow"]["model_version"])}  # production (v0001) is not in MLflow
    mv = client.get_model_version("finsent", result["mlflow"]["model_version"])
    assert mv.tags["finsent_version"] == result["version"] and mv.run_id == run.info.run_id

    # moving production in finsent moves it in MLflow; rolling back removes it where MLflow has no such version
    assert main(["models", "promote", result["version"], "--force"]) == 0
    number = int(mv.version)
    assert client.get_registered_model("finsent").aliases == {"candidate": number, "production": number}
    assert main(["models", "rollback"]) == 0
    assert Registry(tmp_path / "reg").resolve("production").version == result["parent"]
    assert client.get_registered_model("finsent").aliases == {"candidate": int(mv.version)}
