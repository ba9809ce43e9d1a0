"""The API server as taas up and compose run it: `python -m app.server --host H --port P [--processes N]`.

Uvicorn (uvloop + httptools) with one process per core by default, all accepting on one socket, so
/predict's decoding and inference use every core (each process batches its own requests, app.serving.batching).
TCP_NODELAY is set on every accepted connection: with Nagle's algorithm on, a response written in two
segments waits for the client's delayed ACK (about 40 ms per request, measured with uvicorn --workers 2).
Without Nagle, each write is a send and a packet of its own, so a response's head waits for its body and
the two go out as one (PairedWrites).
"""

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.config import get_settings
from app.core.migrate import schema_problem
from app.web.guard import is_loopback


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PairedWrites:
    """A connection's transport whose writes go out in pairs: a write is held until the next one, which is sent
    with it, or until the event loop's next turn.

    Uvicorn writes a response's head and its body separately; with TCP_NODELAY each write is a send and a packet
    of its own, where Nagle's algorithm used to join them. Held, the head of a plain response leaves with its
    body in one send (py-spy, one API process under 64 clients: the two sends took 15 % of its CPU); a lone write
    (a streamed response's head, an event) waits at most for the loop's turn."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is None:
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            held, self._held = self._held, None
            self._transport.write(held + data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def _flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():  # the connection went during the turn: nothing to send to
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol, with TCP_NODELAY on its connection and its writes paired (PairedWrites)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        paired = PairedWrites(transport, asyncio.get_running_loop())
        super().connection_made(cast(asyncio.Transport, paired))


def default_processes() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def serve(*, host: str, port: int, processes: int, log_level: str = "info") -> None:
    if get_settings().predict_threads == 0:
        # torch's intra-op threads, shared out between the processes (they read it as a setting).
        os.environ["TAAS_PREDICT_THREADS"] = str(max(1, default_processes() // processes))
    with metrics_folder():
        uvicorn.run("app.main:app", host=host, port=port, workers=processes, http=NoDelayHttpToolsProtocol,
                    loop="uvloop", log_level=log_level, timeout_graceful_shutdown=10)


@contextmanager
def metrics_folder() -> Iterator[str]:
    """A fresh private folder (mode 0700) where every API process writes its metric values (app.live.metrics), set
    as PROMETHEUS_MULTIPROC_DIR for this run only and removed at exit.

    Set before the processes start: they inherit it, and prometheus_client picks its mode when it is first
    imported. A folder kept from an earlier run would add that run's counts to this one's."""
    folder, before = tempfile.mkdtemp(prefix="taas-metrics-"), os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield folder
    finally:
        if before is None:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = before
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.server", description="Run the taas API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--processes", type=int, default=0,
                        help="API processes (default: the api_processes setting, else one per CPU core)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    settings = get_settings()
    processes = args.processes or settings.api_processes or default_processes()
    if processes < 1:
        parser.error("--processes must be at least 1")
    if not settings.auth and not is_loopback(args.host):
        parser.error(f"auth is off (TAAS_AUTH=false): the API listens only on a loopback address, not {args.host!r}"
                     " (turn auth on, or --host 127.0.0.1)")
    problem = schema_problem(settings.database_url)
    if problem is not None:
        parser.exit(2, f"{parser.prog}: {problem}\n")
    serve(host=args.host, port=args.port, processes=processes, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
