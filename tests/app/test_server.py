"""app.server: TCP_NODELAY on every accepted connection (uvloop, as the server runs), and the database
limiter that keeps routes from exhausting the pool."""

import asyncio
import socket
import time

import anyio
import pytest
import uvloop

from app.db import Database, make_engine
from app.errors import Unavailable
from app.server import NoDelayHttpToolsProtocol, set_nodelay


def test_accepted_connections_get_tcp_nodelay():
    async def main() -> list[int]:
        seen: list[int] = []

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
                sock = transport.get_extra_info("socket")
                before = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                set_nodelay(transport)
                seen.extend([before, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)])
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        return seen

    seen = uvloop.run(main())
    assert seen[1] == 1


def test_the_server_runs_a_process_per_core_with_the_nodelay_protocol(monkeypatch: pytest.MonkeyPatch):
    import app.server

    calls: list[dict] = []
    monkeypatch.setattr(app.server.uvicorn, "run", lambda target, **kw: calls.append({"target": target, **kw}))
    monkeypatch.setenv("TAAS_PREDICT_THREADS", "0")  # restored after the test (serve() sets it for its children)
    assert app.server.main(["--port", "8123"]) == 0
    (call,) = calls
    assert call["target"] == "app.main:app" and call["http"] is NoDelayHttpToolsProtocol
    assert call["workers"] == app.server.default_processes() and call["loop"] == "uvloop"


def test_database_admits_at_most_its_capacity_and_refuses_past_the_wait(tmp_path):
    db = Database(make_engine(f"sqlite:///{tmp_path / 'x.db'}", pre_ping=False), capacity=1, wait_seconds=0.2)

    async def main() -> tuple[str, float]:
        async def slow() -> str:
            return await db.run(lambda session: time.sleep(1.0) or "slow")

        holder = asyncio.ensure_future(slow())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="limit of database connections"):
            await db.read(lambda session: "never")
        waited = time.monotonic() - started
        return await holder, waited

    result, waited = anyio.run(main)
    assert result == "slow" and waited < 0.9  # refused after its wait, not after the holder finished
    db.dispose()
