"""deploy/k8s, validated offline: every manifest against the Kubernetes API schema with
``kubernetes-validate --strict`` (PyPI; an unknown field fails), the GPU overlay's patches applied first
(a small strategic merge below: maps merged, lists of named items merged by name). The KEDA
ScaledObject is a CRD the validator has no schema for: its fields are checked against the base.
Then what matters: worker replicas and autoscaling within FINSENT_PARTITIONS, probes on /healthz and
/readyz of the port each container serves, graceful termination, a restricted security context with
the image's uid, the PDB, the push endpoint's Service and NetworkPolicy, the retrain CronJob, the GPU
variant, the registry volume, settings that exist, and commands the real CLI accepts.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from finsent.cli import build_parser
from finsent.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.33.0"
LONG_RUNNING = ("Deployment",)


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def merge(base: Any, patch: Any) -> Any:
    """Strategic-merge-patch, as far as these manifests need: maps deep, named lists by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        out = [dict(i) for i in base]
        for item in patch:
            at = next((n for n, b in enumerate(out) if b["name"] == item["name"]), None)
            if at is None:
                out.append(copy.deepcopy(item))
            else:
                out[at] = merge(out[at], item)
        return out
    return copy.deepcopy(patch)


def build(folder: Path) -> list[dict]:
    """What ``kubectl kustomize folder`` renders, for the features used here (resources, patches)."""
    k = kustomization(folder)
    objects: list[dict] = []
    for res in k.get("resources", []):
        path = folder / res
        objects += build(path) if path.is_dir() else docs(path)
    for patch in k.get("patches", []):
        target = patch["target"]
        (body,) = docs(folder / patch["path"])
        for n, obj in enumerate(objects):
            if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target["name"]:
                objects[n] = merge(obj, body)
    return objects


BASE = build(K8S / "base")
GPU = build(K8S / "gpu")


def find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def pod_spec(obj: dict) -> dict:
    spec = obj["spec"]
    return spec["jobTemplate"]["spec"]["template"]["spec"] if obj["kind"] == "CronJob" else spec["template"]["spec"]


def _partitions() -> int:
    return int(find(BASE, "ConfigMap", "finsent-config")["data"]["FINSENT_PARTITIONS"])


def _all_manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize(
    "obj",
    [o for o in GPU if o["apiVersion"] != "keda.sh/v1alpha1"],
    ids=lambda o: f"{o['kind']}/{o['metadata']['name']}",
)
def test_every_manifest_validates_against_the_api_schema(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_every_file_is_part_of_an_overlay_and_validated() -> None:
    """The GPU overlay renders the base too, so validating it covers every file (KEDA's is the optional CRD)."""
    used: set[Path] = set()
    for folder in (K8S / "base", K8S / "gpu"):
        k = kustomization(folder)
        used |= {(folder / r).resolve() for r in k.get("resources", []) if not (folder / r).is_dir()}
        used |= {(folder / p["path"]).resolve() for p in k.get("patches", [])}
        for res in k.get("resources", []):
            assert (folder / res).exists(), f"{folder.name}/kustomization.yaml lists missing {res}"
    assert set(_all_manifest_files()) - used == {K8S / "optional" / "keda-scaledobject.yaml"}


def test_the_validator_rejects_a_broken_manifest() -> None:
    broken = copy.deepcopy(find(BASE, "Deployment", "finsent-worker"))
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_workers_never_outnumber_the_partitions() -> None:
    partitions = _partitions()
    worker = find(BASE, "Deployment", "finsent-worker")
    hpa = find(BASE, "HorizontalPodAutoscaler", "finsent-worker")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "finsent-worker"
    assert 1 < hpa["spec"]["minReplicas"] <= worker["spec"]["replicas"] <= hpa["spec"]["maxReplicas"] <= partitions
    gpu_hpa = find(GPU, "HorizontalPodAutoscaler", "finsent-worker")
    gpu_workers = find(GPU, "Deployment", "finsent-worker-gpu")["spec"]["replicas"]
    assert gpu_hpa["spec"]["maxReplicas"] + gpu_workers <= partitions


def test_autoscaling_on_consumer_lag() -> None:
    hpa = find(BASE, "HorizontalPodAutoscaler", "finsent-worker")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "finsent_consumer_lag_messages"
    from finsent.stream.metrics import worker_metrics  # the workers really export that gauge

    assert worker_metrics().consumer_lag._name == "finsent_consumer_lag_messages"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_keda_alternative_matches_the_base() -> None:
    (keda,) = docs(K8S / "optional" / "keda-scaledobject.yaml")
    config = find(BASE, "ConfigMap", "finsent-config")["data"]
    assert keda["apiVersion"] == "keda.sh/v1alpha1" and keda["kind"] == "ScaledObject"
    assert keda["spec"]["scaleTargetRef"]["name"] == "finsent-worker"
    assert keda["spec"]["maxReplicaCount"] <= _partitions()
    (trigger,) = keda["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka" and meta["consumerGroup"] == config["FINSENT_CONSUMER_GROUP"]
    assert meta["topic"] == Settings().kafka.topic_raw and meta["bootstrapServers"] == config["FINSENT_BROKERS"]
    assert meta["allowIdleConsumers"] == "false" and int(meta["lagThreshold"]) > 0


def _served_port(container: dict, config: dict[str, str]) -> int:
    args = container.get("args", [])
    for flag in ("--metrics-port", "--port"):
        if flag in args:
            return int(args[args.index(flag) + 1])
    return int(config["FINSENT_METRICS_PORT"])


def _port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


@pytest.mark.parametrize("name", ["finsent-worker", "finsent-worker-gpu", "finsent-ingest", "finsent-push"])
def test_probes_hit_healthz_and_readyz_on_the_served_port(name: str) -> None:
    deployment = find(GPU, "Deployment", name)
    config = find(BASE, "ConfigMap", "finsent-config")["data"]
    for c in pod_spec(deployment)["containers"]:
        port = _served_port(c, config)
        live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
        assert live["path"] == "/healthz" and _port_number(c, live["port"]) == port, c["name"]
        assert _port_number(c, ready["port"]) == port
        # ready = group joined, model, store (worker); producer's last contact with Kafka succeeded (ingesters)
        assert ready["path"] == "/readyz", c["name"]
        if "startupProbe" in c:
            assert c["startupProbe"]["httpGet"]["path"] == "/healthz"


def _containers(obj: dict) -> list[dict]:
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec["containers"]


def _workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in ("Deployment", "CronJob")]


def test_graceful_termination_and_restricted_pods() -> None:
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    uid = int(re.findall(r"^USER (\d+):\d+$", dockerfile, flags=re.MULTILINE)[-1])
    for obj in _workloads(GPU):
        spec = pod_spec(obj)
        if obj["kind"] in LONG_RUNNING:  # finsent stops within 10 s of SIGTERM
            assert spec["terminationGracePeriodSeconds"] == 30, obj["metadata"]["name"]
        sec = spec["securityContext"]
        assert sec["runAsNonRoot"] and sec["runAsUser"] == uid and sec["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for c in _containers(obj):
            csec = c["securityContext"]
            assert csec["allowPrivilegeEscalation"] is False and csec["readOnlyRootFilesystem"] is True
            assert csec["capabilities"]["drop"] == ["ALL"]
            limits = c["resources"]["limits"]
            assert "memory" in limits and "cpu" in limits and c["resources"]["requests"], c["name"]
            mounted = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert c["name"] == "seed-model-cache" or "/tmp" in mounted, "read-only root: /tmp is a volume"


def test_pod_disruption_budgets_cover_the_workers() -> None:
    for name in ("finsent-worker", "finsent-worker-gpu"):
        pdb = find(GPU, "PodDisruptionBudget", name)
        labels = pod_spec_labels(find(GPU, "Deployment", name))
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["maxUnavailable"] == 1


def pod_spec_labels(obj: dict) -> dict[str, str]:
    return obj["spec"]["template"]["metadata"]["labels"]


def test_push_endpoint_service_and_network_policy() -> None:
    push = find(BASE, "Deployment", "finsent-push")
    labels = pod_spec_labels(push)
    svc = find(BASE, "Service", "finsent-push")
    assert svc["spec"]["selector"].items() <= labels.items()
    (container,) = pod_spec(push)["containers"]
    args = container["args"]
    http_port, metrics_port = int(args[args.index("--port") + 1]), _served_port(container, {})
    assert svc["spec"]["ports"][0]["port"] == http_port and [p["port"] for p in svc["spec"]["ports"]] == [8088]
    policy = find(BASE, "NetworkPolicy", "finsent-push")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    clients, monitoring = policy["spec"]["ingress"]
    assert clients["from"] and [p["port"] for p in clients["ports"]] == [http_port]
    # the token-free metrics port: Prometheus (monitoring namespace) only
    assert monitoring["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert [p["port"] for p in monitoring["ports"]] == [metrics_port] != [http_port]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert "--host" in container["args"] and container["args"][container["args"].index("--host") + 1] == "0.0.0.0"


def test_retrain_cronjob() -> None:
    job = find(BASE, "CronJob", "finsent-retrain")
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    (c,) = pod_spec(job)["containers"]
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])
    assert pod_spec(job)["restartPolicy"] == "Never" and job["spec"]["jobTemplate"]["spec"]["backoffLimit"] <= 1
    deadline = job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert c["args"][:3] == ["retrain", "--max-minutes", "60"] and 60 * 60 < deadline <= 2 * 60 * 60
    assert "nodeSelector" not in pod_spec(job), "the GPU node selector is the gpu overlay's (optional)"
    gpu_job = find(GPU, "CronJob", "finsent-retrain")
    assert pod_spec(gpu_job)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    (gpu_c,) = pod_spec(gpu_job)["containers"]
    assert gpu_c["resources"]["limits"]["nvidia.com/gpu"] == 1 and gpu_c["image"] == "finsent-retrain"
    assert gpu_c["resources"]["limits"]["memory"] == c["resources"]["limits"]["memory"], "the patch merged, kept"


def test_gpu_worker_variant() -> None:
    gpu = find(GPU, "Deployment", "finsent-worker-gpu")
    spec = pod_spec(gpu)
    (c,) = spec["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FINSENT_MODEL_VARIANT"] == "fp16" and c["image"] == "finsent-gpu"
    cpu = pod_spec(find(BASE, "Deployment", "finsent-worker"))["containers"][0]
    assert c["envFrom"] == cpu["envFrom"], "one consumer group, one configuration"


def test_registry_volume_is_shared_read_only_by_workers_and_written_by_retrain() -> None:
    pvc = find(BASE, "PersistentVolumeClaim", "finsent-registry")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    registry = find(BASE, "ConfigMap", "finsent-config")["data"]["FINSENT_REGISTRY"]
    for name, kind, read_only in (
        ("finsent-worker", "Deployment", True),
        ("finsent-worker-gpu", "Deployment", True),
        ("finsent-retrain", "CronJob", False),
    ):
        spec = pod_spec(find(GPU, kind, name))
        vol = next(
            v["name"]
            for v in spec["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == "finsent-registry"
        )
        (mount,) = [m for c in spec["containers"] for m in c["volumeMounts"] if m["name"] == vol]
        assert mount["mountPath"] == registry and bool(mount.get("readOnly")) is read_only, name


def test_config_names_real_settings_and_the_secret_is_a_settings_file() -> None:
    settings = {f"FINSENT_{name.upper()}" for name in Settings.flat_fields()}
    config = find(BASE, "ConfigMap", "finsent-config")["data"]
    assert set(config) <= settings, f"keys no finsent setting reads: {set(config) - settings}"
    for obj in _workloads(GPU):
        for c in pod_spec(obj)["containers"]:
            assert {e["name"] for e in c.get("env", [])} <= settings | {"FINSENT_CONFIG", "FINSENT_CACHE_DIR"}
    secret = find(BASE, "Secret", "finsent-secrets")
    values = yaml.safe_load(secret["stringData"]["finsent.yaml"])
    assert set(values) <= set(Settings.flat_fields()) and "store" in values
    assert all("CHANGE-ME" in str(v) for v in values.values()), "the Secret is a documented placeholder"
    Settings(**values)  # a valid settings file once the placeholders are replaced
    for obj in _workloads(GPU):
        spec = pod_spec(obj)
        for c in spec["containers"]:
            path = next(e["value"] for e in c["env"] if e["name"] == "FINSENT_CONFIG")
            mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
            vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            assert vol["secret"]["secretName"] == "finsent-secrets" and path.endswith("/finsent.yaml")


def test_commands_are_accepted_by_the_cli() -> None:
    parser = build_parser()
    for obj in _workloads(GPU):
        for c in pod_spec(obj)["containers"]:
            try:
                args = parser.parse_args(c["args"])
            except SystemExit as exc:
                raise AssertionError(f"{obj['metadata']['name']}/{c['name']}: finsent {c['args']} rejected") from exc
            assert args.command == c["args"][0]


def test_operations_section_names_real_settings_and_files() -> None:
    """docs/operations.md points at files that exist and at FINSENT_* variables finsent reads."""
    section = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    settings = {f"FINSENT_{name.upper()}" for name in Settings.flat_fields()} | {"FINSENT_CONFIG", "FINSENT_WORKERS"}
    named = set(re.findall(r"FINSENT_[A-Z_]+[A-Z]", section))
    assert named and named <= settings, f"not settings: {named - settings}"
    paths = set(re.findall(r"`(deploy/[^`\s]+)`", section))
    assert paths and all((ROOT / p.rstrip("/")).exists() for p in paths), [p for p in paths if not (ROOT / p).exists()]
    sizing = (ROOT / "docs" / "sizing.md").read_text(encoding="utf-8")
    assert "items/s" in sizing and "TODO" not in sizing, sizing[:500]


def test_workers_data_api_needs_the_token_from_the_secret() -> None:
    """Issue 22, item 6: workers listen on 0.0.0.0 (Prometheus), so their /v1/* data API must get its token."""
    config = find(BASE, "ConfigMap", "finsent-config")["data"]
    assert config["FINSENT_METRICS_HOST"] == "0.0.0.0"
    secret = find(BASE, "Secret", "finsent-secrets")
    for name in ("finsent-worker", "finsent-worker-gpu"):
        (c,) = pod_spec(find(GPU, "Deployment", name))["containers"]
        (token,) = [e for e in c["env"] if e["name"] == "FINSENT_API_TOKEN"]
        ref = token["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "finsent-secrets" and "CHANGE-ME" in secret["stringData"][ref["key"]], name
        assert "value" not in token, "a token literal in a manifest"


def test_worker_network_policy_lets_in_only_monitoring_and_labelled_api_clients() -> None:
    policy = find(GPU, "NetworkPolicy", "finsent-worker")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    selected = {
        o["metadata"]["name"]
        for o in GPU
        if o["kind"] == "Deployment" and selector.items() <= pod_spec_labels(o).items()
    }
    assert selected == {"finsent-worker", "finsent-worker-gpu"}, selected
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    config = find(BASE, "ConfigMap", "finsent-config")["data"]
    (c,) = pod_spec(find(BASE, "Deployment", "finsent-worker"))["containers"]
    port = _served_port(c, config)
    rules = policy["spec"]["ingress"]
    assert len(rules) == 2
    for rule in rules:  # no rule without peers (that would admit everyone), no other port
        assert rule["from"] and [(p["port"], p["protocol"]) for p in rule["ports"]] == [(port, "TCP")]
    metrics, api = rules
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    for peer in api["from"]:  # every API peer is a pod that carries the client label
        assert peer["podSelector"]["matchLabels"] == {"finsent.io/api-client": "true"}, peer


def _annotation_scrape_targets(obj: dict) -> set[int]:
    """The ports Prometheus scrapes in a pod under the usual annotation-driven job (Prometheus' example
    kubernetes-pods job, the Helm chart's): role pod gives a target per declared container port; keep pods
    with prometheus.io/scrape=true; prometheus.io/port, when set, rewrites every target's port (so the
    targets collapse to that one port)."""
    meta = obj["spec"]["template"]["metadata"]
    annotations = meta.get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true":
        return set()
    declared = {p["containerPort"] for c in pod_spec(obj)["containers"] for p in c.get("ports", [])}
    if "prometheus.io/port" in annotations:
        return {int(annotations["prometheus.io/port"])}
    return declared


def _token_free_metrics_ports(obj: dict, config: dict[str, str]) -> set[int]:
    """Where each container serves /metrics without a token: --metrics-port, else FINSENT_METRICS_PORT (a
    worker). The push endpoint's --port /metrics needs its bearer token (401 to Prometheus)."""
    ports = set()
    for c in pod_spec(obj)["containers"]:
        args = c.get("args", [])
        ports.add(
            int(args[args.index("--metrics-port") + 1])
            if "--metrics-port" in args
            else int(config["FINSENT_METRICS_PORT"])
        )
    return ports


@pytest.mark.parametrize("name", ["finsent-worker", "finsent-worker-gpu", "finsent-ingest", "finsent-push"])
def test_prometheus_scrapes_every_metrics_port_and_no_token_guarded_one(name: str) -> None:
    """Issue 25: the push pod was scraped on 8088 (its /metrics needs the token: always down) and the ingest
    pod runs two pollers (9464, 9465) but prometheus.io/port named only 9464. Every token-free metrics port
    of every pod is a target, no other port is, and the metrics host is not loopback."""
    config = find(BASE, "ConfigMap", "finsent-config")["data"]
    assert config["FINSENT_METRICS_HOST"] == "0.0.0.0"
    deployment = find(GPU, "Deployment", name)
    served = _token_free_metrics_ports(deployment, config)
    assert _annotation_scrape_targets(deployment) == served, name
    for c in pod_spec(deployment)["containers"]:  # each one is declared, so role pod finds it
        assert served & {p["containerPort"] for p in c["ports"]}, c["name"]
