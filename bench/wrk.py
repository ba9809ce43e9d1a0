"""Load generation with wrk (Debian package `wrk`): keep-alive connections, every response checked.

A Lua script sets the request and counts, per wrk thread, responses that are not a 200 holding the
expected text `expect` times; done() prints one JSON line that run() parses."""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

_CHECK = r"""
ok, wrong, failed = 0, 0, 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
local function count(body, text)
  local n, at = 0, 1
  while true do
    local s, e = string.find(body, text, at, true)
    if not s then return n end
    n, at = n + 1, e + 1
  end
end
function response(status, headers, body)
  if status ~= 200 then failed = failed + 1
  elseif count(body, EXPECT) ~= EXPECT_COUNT then wrong = wrong + 1
  else ok = ok + 1 end
end
function done(summary, latency, requests)
  local o, w, f = 0, 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); w = w + t:get("wrong"); f = f + t:get("failed") end
  io.write(string.format(
    'WRKJSON {"requests": %d, "seconds": %.3f, "ok": %d, "wrong": %d, "non_200": %d, "socket_errors": %d, ' ..
    '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, o, w, f,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
"""


def lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def script(*, method: str, body: bytes = b"", headers: dict[str, str] | None = None, expect: str,
           expect_count: int = 1, paths: list[str] | None = None) -> str:
    """With paths, each request takes the next of them in turn (each wrk thread starting at its own)."""
    lines = [f'wrk.method = "{method}"', f"wrk.body = {lua_string(body)}" if body else ""]
    if paths:
        lines += ["PATHS = {" + ", ".join(lua_string(p.encode()) for p in paths) + "}",
                  "local n = math.random(#PATHS)",
                  "function request() n = n % #PATHS + 1; return wrk.format(nil, PATHS[n]) end"]
    lines += [f'wrk.headers[{lua_string(k.encode())}] = {lua_string(v.encode())}' for k, v in (headers or {}).items()]
    lines += [f"EXPECT = {lua_string(expect.encode())}", f"EXPECT_COUNT = {expect_count}", _CHECK]
    return "\n".join(lines)


def run(url: str, lua: str, *, connections: int, duration: float, threads: int = 1) -> dict:
    """wrk's figures for `duration` seconds on `connections` keep-alive connections."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as file:
        file.write(lua)
        file.flush()
        out = subprocess.run(
            ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(duration))}s",
             "--timeout", "30s", "-s", file.name, url],
            capture_output=True, text=True, timeout=duration + 120, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    result: dict = json.loads(line.removeprefix("WRKJSON "))
    result["req_per_s"] = round(result["requests"] / result["seconds"], 1)
    result["connections"] = connections
    return result


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type: fields, then (field, filename, data) files."""
    boundary = "taasbench7e3f0c1d"
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, filename, data in files:
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="taas-bench-"))
