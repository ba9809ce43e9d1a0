"""docker-compose.yml: validated by docker-compose itself when installed, and always by its structure."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.config import CLIENT_SETTINGS, Settings
from tests.prerequisites import missing

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker-compose.cpu.yml"
PYTHON_SERVICES = ("migrate", "api", "worker", "ingest")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


def _env_names(service: dict[str, Any]) -> set[str]:
    env = service["environment"]
    items = env if isinstance(env, list) else [f"{k}={v}" for k, v in env.items()]
    return {item.split("=", 1)[0] for item in items}


def _setting_names() -> set[str]:
    """The services' settings (the client's, such as TAAS_API_URL, have no business in a container)."""
    return {f"TAAS_{name.upper()}" for name in Settings.model_fields if name not in CLIENT_SETTINGS}


def test_services_and_startup_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"db", "redis", "migrate", "api", "worker", "ingest"}
    assert services["db"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    for name in ("api", "worker", "ingest"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "redis": {"condition": "service_healthy"},
        }, name
    api_command = services["api"]["command"]
    # The multi-process server with TCP_NODELAY (app/server.py), as taas up runs it.
    assert api_command[:3] == ["python", "-m", "app.server"] and "0.0.0.0" in api_command and "8000" in api_command
    assert services["api"]["ports"] == ["${TAAS_API_PORT:-8000}:8000"]
    worker = services["worker"]["command"]
    # Queue names carry the deployment's prefix, as the API's do (app.core.queue.queue_name).
    assert worker.startswith(
        "celery -A worker.celery_app worker -Q ${TAAS_QUEUE_PREFIX:-}gpu,${TAAS_QUEUE_PREFIX:-}cpu ")
    assert "--prefetch-multiplier 1" in worker and "--concurrency" in worker
    ingest = services["ingest"]["command"]
    assert ingest.startswith("celery -A worker.celery_app worker -Q ${TAAS_QUEUE_PREFIX:-}ingest ")
    assert "deploy" not in services["ingest"]  # CPU only


def test_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "/health" in " ".join(services["api"]["healthcheck"]["test"])


def test_one_image_for_the_python_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in PYTHON_SERVICES:
        assert services[name]["build"] == "." and services[name]["image"] == "taas:latest", name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"][:2]
    assert pins == ["torch==2.14.1", "torchvision==0.29.1"]
    assert "pip install torch==2.14.1 torchvision==0.29.1" in dockerfile
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (p.rstrip("*") for p in packages):
        assert f"COPY {package} ./{package}" in dockerfile, f"the image lacks {package}/"
    assert "TORCH=(torch==2.14.1 torchvision==0.29.1)" in (ROOT / "taas.sh").read_text()


def test_gpu_reservation_and_cpu_override(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    cpu = load(CPU_OVERRIDE)["services"]
    assert cpu["worker"] == {"profiles": ["gpu"]}
    assert "deploy" not in cpu["worker-cpu"]
    assert cpu["worker-cpu"]["command"].startswith(
        "celery -A worker.celery_app worker -Q ${TAAS_QUEUE_PREFIX:-}cpu,${TAAS_QUEUE_PREFIX:-}gpu ")
    assert cpu["worker-cpu"]["volumes"] == compose["services"]["worker"]["volumes"]
    assert _env_names(cpu["worker-cpu"]) == _env_names(compose["services"]["worker"])


def test_volumes_are_shared(compose: dict[str, Any]) -> None:
    assert set(compose["volumes"]) == {"pgdata", "redisdata", "artifacts", "data", "datasets"}
    artifacts = "artifacts:/var/lib/taas/artifacts"
    for name in ("api", "worker"):
        assert artifacts in compose["services"][name]["volumes"], name
        assert "data:/var/lib/taas/data" in compose["services"][name]["volumes"], name
    # Uploads land on the API's disk and are read by the ingest and the trainers.
    for name in ("api", "worker", "ingest"):
        assert "datasets:/var/lib/taas/datasets" in compose["services"][name]["volumes"], name
    environment = compose["services"]["api"]["environment"]
    assert "TAAS_ARTIFACTS_DIR=/var/lib/taas/artifacts" in environment
    assert compose["services"]["db"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]


def test_every_setting_reaches_the_services_and_env_example(compose: dict[str, Any]) -> None:
    for name in PYTHON_SERVICES:
        missing = _setting_names() - _env_names(compose["services"][name])
        assert not missing, f"{name}: add {sorted(missing)} to x-taas-environment in docker-compose.yml"
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?(TAAS_[A-Z0-9_]+)=", example, re.M))
    assert not _setting_names() - listed, f"add {sorted(_setting_names() - listed)} to .env.example"
    assert not listed - _setting_names() - {"TAAS_API_PORT", "TAAS_WORKER_CONCURRENCY", "TAAS_API_URL", "TAAS_API_KEY"}
    assert re.search(r"^POSTGRES_PASSWORD=", example, re.M)
    # The secret is required, never defaulted.
    text = COMPOSE.read_text()
    assert "${POSTGRES_PASSWORD:?" in text and "${POSTGRES_PASSWORD:-" not in text


def _compose_binary() -> str | None:
    return shutil.which("docker-compose")


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, CPU_OVERRIDE]], ids=["gpu", "cpu"])
def test_docker_compose_config_accepts_it(files: list[Path], tmp_path: Path) -> None:
    binary = _compose_binary()
    if binary is None:
        missing("docker-compose is not installed (apt-get install docker-compose)")
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    args = [binary, "--env-file", str(env_file)] + [a for f in files for a in ("-f", str(f))] + ["config"]
    base_env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(args, cwd=ROOT, env={**base_env, "POSTGRES_PASSWORD": "secret"}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    assert resolved["api"]["environment"]["TAAS_DATABASE_URL"] == "postgresql://taas:secret@db:5432/taas"
    worker = resolved["worker-cpu" if CPU_OVERRIDE in files else "worker"]
    command = worker["command"] if isinstance(worker["command"], str) else " ".join(worker["command"])
    assert " -Q cpu,gpu " in command or " -Q gpu,cpu " in command
    refused = subprocess.run(args, cwd=ROOT, env=base_env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr
