"""The README stays honest: its commands are the ones CI runs, and it lists every setting."""

import re
from pathlib import Path

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readmes_test_command():
    assert "./taas.sh test" in README and "./taas.sh run" in README
    script = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == "exec ./taas.sh test"
    # Before it, only the installation of the system packages the README names as the tests' prerequisites.
    packages = re.search(r"^PACKAGES=\((.*)\)$", script, re.M)
    assert packages is not None
    for package in packages.group(1).split():
        assert f"apt-get install {packages.group(1)}" in README or f"`{package}`" in README, package
    assert all(line.startswith(("set ", "cd ", "PACKAGES=", "if ", "apt-get ", "|| ", "fi", "exec "))
               for line in commands), commands


def test_readme_lists_every_setting():
    documented = set(re.findall(r"`TAAS_([A-Z0-9_]+)`", README))
    assert {name.upper() for name in Settings.model_fields} <= documented


def test_every_file_and_folder_the_readme_names_exists():
    """The Layout section and the rest name modules and tests by path: none may be left behind by a move."""
    named = set(re.findall(r"`((?:app|worker|spec|models|tests|bench|migrations|scripts)/[\w./<>-]*)`", README))
    named = {path.split("`")[0] for path in named if "<" not in path}
    missing = sorted(path for path in named if not (ROOT / path.rstrip("/")).exists())
    assert named and not missing, missing
