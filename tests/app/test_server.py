"""app.server: TCP_NODELAY on every accepted connection (uvloop, as the server runs), and the database
limiter that keeps routes from exhausting the pool."""

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
import uvloop

from app.core.db import Database, make_engine
from app.core.errors import Unavailable
from app.core.migrate import upgrade_head
from app.server import NoDelayHttpToolsProtocol, PairedWrites, set_nodelay
from tests.app.harness import configure


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


def test_the_server_runs_a_process_per_core_with_the_nodelay_protocol(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path, redis_url: str):
    import app.server

    database = f"sqlite:///{tmp_path / 'taas.db'}"
    upgrade_head(database)  # it starts only on a database at its schema (tests/app/test_migrations.py)
    configure(monkeypatch, tmp_path, database_url=database, redis_url=redis_url)
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


class RecordingTransport:
    """What PairedWrites hands its sends to: records them, as a socket transport would send them."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


def test_paired_writes_send_a_head_with_its_body_and_a_lone_write_on_the_next_turn():
    async def main() -> None:
        real = RecordingTransport()
        paired = PairedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        paired.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert real.sent == [] and paired.get_write_buffer_size() > 0
        paired.write(b"{}")
        assert real.sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]  # one send, at once
        paired.write(b"data: 1\n\n")  # a streamed event with nothing after it
        assert len(real.sent) == 1
        await asyncio.sleep(0)
        assert real.sent[-1] == b"data: 1\n\n"
        paired.write(b"last words")
        paired.close()  # what is held goes before the connection closes
        assert real.sent[-1] == b"last words" and real.closed
        gone = PairedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        gone.write(b"too late")  # the connection is lost before the loop's turn: dropped, no error
        await asyncio.sleep(0)
        assert real.sent[-1] == b"last words"

    uvloop.run(main())


def test_through_uvicorn_a_streamed_head_arrives_before_its_late_body_and_plain_answers_are_whole():
    async def app(scope: dict, receive: object, send: Any) -> None:
        if scope["type"] != "http":
            return
        length = [] if scope["path"] == "/stream" else [(b"content-length", b"4")]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain"),
                                                                              *length]})
        if scope["path"] == "/stream":
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await asyncio.sleep(1.0)
        await send({"type": "http.response.body", "body": b"done"})

    async def main() -> tuple[float, bytes, list[bytes]]:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, http=NoDelayHttpToolsProtocol, loop="none",
                                log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        plain = []
        for _ in range(3):  # keep-alive: each answer whole, in order
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            plain.append(head.split(b"\r\n", 1)[0] + b" " + await reader.readuntil(b"done"))
        started = time.monotonic()
        writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        await reader.readuntil(b"first")
        first_after = time.monotonic() - started
        rest = await reader.readuntil(b"0\r\n\r\n")
        writer.close()
        server.should_exit = True
        await serving
        return first_after, rest, plain

    first_after, rest, plain = uvloop.run(main())
    assert plain == [b"HTTP/1.1 200 OK done"] * 3
    # The head and the first chunk came before the body's 1 s wait.
    assert first_after < 0.9 and rest.endswith(b"done\r\n0\r\n\r\n")
