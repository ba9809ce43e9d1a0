"""Every operation of the OpenAPI schema, fuzzed by schemathesis against the real server process (app.server
on PostgreSQL and Redis) with an admin key: no input reaches a 5xx, and every answer conforms to the schema
(documented status codes, content types, headers and bodies). A bounded number of examples per operation."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.tables import JobStatus
from app.local.processes import free_port
from tests.app.harness import ApiEnv, add_job, api_key, bearer, write_weights
from tests.processes import Service, start_api, wait_healthy

CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance"]
EXAMPLES = os.environ.get("TAAS_TEST_SCHEMATHESIS_EXAMPLES", "30")
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.fixture
def api(env: ApiEnv, tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Service]]:
    port = free_port()
    service = start_api(dict(os.environ), tmp_path / "logs", port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, service)
        # Something to find: a succeeded job with weights (ids the fuzzer makes up are simply not found).
        write_weights(env, add_job(env, status=JobStatus.succeeded))
        yield base, bearer(api_key(env.owner, admin=True)), service
    finally:
        service.stop()


def test_every_operation_conforms_and_never_fails(api: tuple[str, dict[str, str], Service], tmp_path: Path) -> None:
    base, auth, service = api
    (name, value), = auth.items()
    run = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{base}/openapi.json", "--header", f"{name}: {value}",
         "--checks", ",".join(CHECKS),
         # A queued job's event stream never ends by design (it waits for the job): tests/test_events.py covers it.
         "--exclude-path", "/jobs/{job_id}/events",
         "--max-examples", EXAMPLES, "--seed", "1", "--generation-deterministic", "--request-timeout", "60",
         "--continue-on-failure", "--workers", "1",
         "--report", "junit", "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=1200, env={**os.environ, "NO_COLOR": "1"})
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
    assert service.alive() and "Traceback" not in service.log(), service.log()[-5000:]
