"""The README stays honest: its commands are the ones CI runs, and it lists every setting."""

import re
from pathlib import Path

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readmes_test_command():
    assert "./taas.sh test" in README and "./taas.sh run" in README
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    assert commands == ["exec ./taas.sh test"]


def test_readme_lists_every_setting():
    documented = set(re.findall(r"`TAAS_([A-Z0-9_]+)`", README))
    assert {name.upper() for name in Settings.model_fields} <= documented
