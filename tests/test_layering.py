"""The import contracts (pyproject's [tool.importlinter], run by ./taas.sh test) hold, and each one would catch an
import it exists to forbid: a copy of the tree with that one import added fails it, naming the chain."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "worker", "models", "spec")
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(binary)], cwd=cwd, capture_output=True, text=True, timeout=120)


def contract(starts: str) -> str:
    """The name of the one contract whose name starts so."""
    (name,) = [c["name"] for c in CONTRACTS if c["name"].startswith(starts)]
    return name


def test_the_import_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(CONTRACTS)} kept, 0 broken" in done.stdout


def test_workers_may_import_nothing_of_app_but_its_core():
    """The worker contract names every package and module of app/ but app.core, so a new one is covered."""
    (worker,) = [c for c in CONTRACTS if c["name"].startswith("worker/ imports only")]
    children = {f"app.{p.stem}" for p in (ROOT / "app").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert set(worker["forbidden_modules"]) == children - {"app.core"}


# One import each contract forbids: (the contract, the module it goes into, the import, the chain reported).
INJECTED = [
    ("app/ never imports worker/", "app/jobs/service.py", "from worker.training.build import run_job",
     "app.jobs.service -> worker.training.build"),
    ("app/ is layered", "app/core/storage.py", "from app.jobs import service",
     "app.core.storage -> app.jobs.service"),
    ("a feature never imports another feature's routes", "app/catalog/schemas.py", "from app.datasets import routes",
     "app.catalog.schemas -> app.datasets.routes"),
    ("worker/ imports only the lower tier", "worker/training/task.py", "from app.jobs.service import get_job",
     "worker.training.task -> app.jobs.service"),
    ("worker/ is layered", "worker/leases/claims.py", "from worker.ingest import lease",
     "worker.leases.claims -> worker.ingest.lease"),
    ("spec/ is the bottom tier", "spec/job.py", "import torch", "spec.job -> torch"),
    ("models/ imports of ours only", "models/mlp.py", "from spec.job import JobSpec", "models.mlp -> spec.job"),
    ("in app/, only the predictor", "app/jobs/service.py", "import torch", "app.jobs.service -> torch"),
    ("no import cycles", "app/jobs/service.py", "from app.live import events", ".jobs -> .live"),
]


@pytest.mark.parametrize(("starts", "module", "line", "chain"), INJECTED, ids=[c[0] for c in INJECTED])
def test_each_contract_fails_on_an_import_it_forbids(tmp_path: Path, starts: str, module: str, line: str,
                                                     chain: str):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / module).open("a") as f:
        f.write(f"\n{line}  # noqa: E402,F401\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    broken = done.stdout.split("Broken contracts")[-1]
    name = contract(starts)
    assert f"{name} BROKEN" in " ".join(done.stdout.split()), done.stdout
    assert chain in broken, broken
