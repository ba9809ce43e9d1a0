"""Settings that end up in database columns are bounded by those columns."""

import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import Settings
from tests.app.harness import api_client, cleanup, configure


@pytest.mark.parametrize(("field", "value"), [("owner", "o" * 65), ("owner", ""), ("queue_prefix", "q" * 25)])
def test_values_that_do_not_fit_their_columns_are_refused(monkeypatch: pytest.MonkeyPatch, field: str,
                                                          value: str):
    monkeypatch.setenv(f"TAAS_{field.upper()}", value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert caught.value.errors()[0]["loc"] == (field,)


def test_the_longest_accepted_values_fit_in_postgres(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     migrated_postgres: str, redis_url: str):
    tag = uuid.uuid4().hex
    owner = f"test-{tag}".ljust(64, "o")
    prefix = f"t{tag[:22]}-"
    assert len(prefix) == 24
    env = configure(monkeypatch, tmp_path, database_url=migrated_postgres, redis_url=redis_url,
                    OWNER=owner, QUEUE_PREFIX=prefix)
    try:
        with api_client(env) as client:
            r = client.post("/jobs", json={"device": "cuda"})
            assert r.status_code == 201, r.text
            assert r.json()["queue"] == f"{prefix}gpu"
            assert [j["id"] for j in client.get("/jobs").json()["data"]] == [r.json()["id"]]
    finally:
        cleanup(env, redis_url)
