"""The import contract (pyproject's [tool.importlinter], run by ./taas.sh test) holds, and it would catch
the import it exists to forbid."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "worker", "models", "spec")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(binary)], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_import_contract_holds():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_contract_fails_on_an_app_to_worker_import(tmp_path: Path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "app" / "jobs" / "service.py").open("a") as f:
        f.write("\nfrom worker.training.build import run_job  # noqa: E402,F401\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "app is not allowed to import worker" in done.stdout
    assert "app.jobs.service -> worker.training.build" in done.stdout
