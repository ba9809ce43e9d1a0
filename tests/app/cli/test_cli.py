"""The `taas` command against a real stack (the compose topology as processes): every client command, the live
progress of `submit --follow` ending with the metrics table, and errors as one readable line with exit 1."""

import io
import json
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from app.cli import cli
from app.client import ApiError, Client
from tests.archives import bars, class_folders, zip_of
from tests.processes import ROOT, service_env, wait_for
from tests.processes import compose_topology as topology

SPEC = {"name": "cli", "dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}, "epochs": 2,
        "batch_size": 32, "device": "cpu"}


@pytest.fixture
def stack(tmp_path: Path, postgres_url: str, redis_url: str, tiny_data_root: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    monkeypatch.setenv("COLUMNS", "200")  # Rich tables unwrapped, whatever the terminal
    with topology(tmp_path, database_url=postgres_url, redis_url=redis_url, data_root=tiny_data_root,
                  workers=1) as (client, _):
        yield str(client.base_url), client.headers["Authorization"].removeprefix("Bearer ")


def taas(stack: tuple[str, str], *args: str, stderr: bool = False) -> str:
    """What the command printed on standard output (and standard error, with stderr=True); it must succeed."""
    url, key = stack
    result = CliRunner().invoke(cli, ["--url", url, "--key", key, *args], catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output)
    return result.output if stderr else result.stdout


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (28, 28)).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_submit_follow_draws_the_progress_and_ends_with_the_metrics(stack: tuple[str, str], tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    shown = taas(stack, "submit", str(spec), "--follow")
    assert "running" in shown and "epoch 1/2" in shown and "epoch 2/2" in shown and "loss " in shown
    assert "batch/s" in shown  # the rate column
    table = shown[shown.index("succeeded"):]
    for header in ("epoch", "train loss", "test loss", "test acc", "seconds"):
        assert header in shown
    assert table.count(" %") >= 2  # a test accuracy per epoch
    job_id = shown.split("job ", 1)[1].split()[0].rstrip(":")

    # Every other command on that job.
    assert job_id in taas(stack, "jobs") and job_id in taas(stack, "jobs", "--status", "succeeded")
    assert '"status": "succeeded"' in taas(stack, "show", job_id)
    lines = taas(stack, "losses", job_id).strip().splitlines()
    assert [int(line.split("\t")[0]) for line in lines] == list(range(2 * (512 // 32)))
    assert taas(stack, "losses", job_id, "--follow").strip().splitlines() == lines  # a finished job replays
    assert taas(stack, "metrics", job_id).count("%") == 2
    images = [tmp_path / f"{i}.png" for i in range(3)]
    for i, path in enumerate(images):
        path.write_bytes(png(i))
    predicted = taas(stack, "predict", job_id, *map(str, images), "--top", "2")
    assert all(f"{i}.png" in predicted for i in range(3)) and predicted.count("%") == 6
    taas(stack, "weights", job_id, "-o", str(tmp_path / "best.safetensors"))
    assert "0.weight" in "".join(load_file(tmp_path / "best.safetensors"))
    taas(stack, "export", job_id, "-o", str(tmp_path / "model.onnx"), "--format", "onnx")
    assert (tmp_path / "model.onnx").stat().st_size > 1000
    taas(stack, "tensorboard", job_id, "-o", str(tmp_path / "tb.tar.gz"))
    with tarfile.open(tmp_path / "tb.tar.gz") as archive:
        assert any("events.out.tfevents" in name for name in archive.getnames())

    # Cancel and remove another.
    long_spec = tmp_path / "long.json"
    long_spec.write_text(json.dumps({**SPEC, "epochs": 300}))
    other = taas(stack, "submit", str(long_spec)).strip().splitlines()[-1]
    assert re.search(r"cancelled|running \(stopping\)", taas(stack, "cancel", other, stderr=True))
    wait_for(lambda: '"status": "cancelled"' in taas(stack, "show", other), timeout=60, what="the cancel")
    assert "deleted" in taas(stack, "rm", other, stderr=True)
    with pytest.raises(ApiError, match="404"):
        taas(stack, "show", other)


def test_datasets_and_keys_commands(stack: tuple[str, str], tmp_path: Path):
    x, y = bars(40, seed=3, classes=2)
    archive = tmp_path / "bars.zip"
    archive.write_bytes(zip_of(class_folders(x, y, ["left", "right"])))
    dataset_id = taas(stack, "datasets", "upload", "bars", str(archive), "--option", "test_fraction=0.25")
    dataset_id = dataset_id.strip().splitlines()[-1]
    assert dataset_id in taas(stack, "datasets") and '"status": "ready"' in taas(stack, "datasets", "show", dataset_id)
    taas(stack, "datasets", "rm", dataset_id)
    assert dataset_id not in taas(stack, "datasets")
    # Keys over HTTP with the admin key (the stack's): made, listed, revoked.
    made = taas(stack, "keys", "create", "--owner", "cli-user", stderr=True)
    key = made.strip().splitlines()[-1]
    key_id = re.search(r"key (\w+) for owner 'cli-user'", made).group(1)  # type: ignore[union-attr]
    assert key.startswith("taas_")
    listed = taas(stack, "keys", "list", "--owner", "cli-user")
    assert key[:12] in listed and key_id in listed
    taas(stack, "keys", "revoke", key_id)
    assert "cli-user" not in taas(stack, "keys", "list", "--owner", "cli-user")


def test_an_error_is_one_line_and_a_non_zero_exit(stack: tuple[str, str]):
    url, key = stack
    run = subprocess.run([sys.executable, "-m", "app.cli", "--url", url, "--key", key, "show", "0" * 32],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env=service_env({}))
    assert run.returncode == 1 and run.stderr.strip() == f"taas: HTTP 404: no job '{'0' * 32}'", run.stderr
    run = subprocess.run([sys.executable, "-m", "app.cli", "--url", url, "--key", "taas_wrong", "jobs"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env=service_env({}))
    assert run.returncode == 1 and run.stderr.startswith("taas: HTTP 401: ") and len(run.stderr.splitlines()) == 1
    run = subprocess.run([sys.executable, "-m", "app.cli", "--url", "http://127.0.0.1:1", "jobs"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env=service_env({}))
    assert run.returncode == 1 and "cannot reach the API at http://127.0.0.1:1" in run.stderr


def test_the_url_and_key_come_from_the_environment_else_the_state_folder(stack: tuple[str, str], tmp_path: Path):
    url, key = stack

    def jobs(settings: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", "jobs"], capture_output=True, text=True,
                              timeout=60, cwd=cwd, env=service_env(settings, PYTHONPATH=str(ROOT)))

    assert jobs({"api_url": url, "api_key": key}, tmp_path).returncode == 0
    assert jobs({"api_url": url}, tmp_path).returncode == 1  # no key anywhere: 401
    # The key `taas up` keeps: ./.taas/api-key by default, or TAAS_STATE_DIR's.
    (tmp_path / ".taas").mkdir()
    (tmp_path / ".taas" / "api-key").write_text(key + "\n")
    assert jobs({"api_url": url}, tmp_path).returncode == 0
    elsewhere = tmp_path / "state"
    elsewhere.mkdir()
    (elsewhere / "api-key").write_text(key)
    assert jobs({"api_url": url, "state_dir": str(elsewhere)}, ROOT).returncode == 0
    # TAAS_API_KEY wins over the state folder's.
    refused = jobs({"api_url": url, "api_key": "taas_wrong"}, tmp_path)
    assert refused.returncode == 1 and refused.stderr.startswith("taas: HTTP 401: ")


def test_following_an_api_that_is_gone_backs_off_then_gives_up():
    started = time.monotonic()
    with Client("http://127.0.0.1:1", "taas_unused") as gone, pytest.raises(ApiError) as failed:
        list(gone.follow("0" * 32, give_up_after=1.2))
    assert failed.value.status == 0
    # Reconnects after 0.5 s and 1 s (then the 1.2 s are spent), not a tight loop of refused connections.
    assert time.monotonic() - started >= 1.4
