"""Load for the server's overload and slow-client tests, and for bench/serve.py.

- `closed_loop`: N clients, each sending its next request when the previous answer came: what
  the server sustains;
- `open_loop`: requests sent at a fixed rate whatever the answers (a real crowd does not wait
  for the server), over a pool of kept-alive connections;
- `probe_loop`: what a kubelet does meanwhile: a new connection per probe, every `period`
  (`open_loop_in_process` runs the load in another process, so the two do not share a CPU);
- `half_headers`: connections that send half a request's headers and then nothing.

Plain asyncio streams and a minimal HTTP/1.1 reader: an HTTP client library costs more CPU per
request than the server spends shedding one, and this machine has two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "Answer",
    "closed_loop",
    "half_headers",
    "open_loop",
    "open_loop_in_process",
    "post_request",
    "probe_loop",
    "run",
]


@dataclass(frozen=True)
class Answer:
    sent: float  # when the request was due (monotonic): open-loop latency counts from there
    status: int  # 0: no answer (connection refused, reset or closed)
    seconds: float
    retry_after: str | None = None
    body: bytes = b""


def post_request(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def get_request(path: str, *, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, dict[bytes, bytes], bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if b":" in line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)


async def closed_loop(port: int, request: bytes, clients: int, seconds: float) -> list[Answer]:
    """`clients` connections, each sending `request` again as soon as it is answered."""
    answers: list[Answer] = []
    end = time.monotonic() + seconds

    async def client() -> None:
        reader, writer = await _open(port)
        try:
            while time.monotonic() < end:
                start = time.monotonic()
                status, _, _ = await _exchange(reader, writer, request)
                answers.append(Answer(start, status, time.monotonic() - start))
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return answers


class _Client(asyncio.Protocol):
    """One kept-alive connection of the open loop: a request at a time, its answer parsed
    from the bytes as they come (no stream objects: this must outpace the server)."""

    def __init__(self, answers: list[Answer], idle: list[_Client]) -> None:
        self.answers, self.idle = answers, idle
        self.buffer = bytearray()
        self.due = 0.0  # the request in flight's due time (0: none)
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def send(self, request: bytes, due: float) -> None:
        self.due = due
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        status = int(head[9:12])
        retry = None
        at = head.find(b"retry-after:")
        if at >= 0:
            retry = head[at + 12 :].split(b"\r\n", 1)[0].strip().decode()
        self.answers.append(
            Answer(
                self.due, status, time.monotonic() - self.due, retry, b"" if status == 200 else body
            )
        )
        self.due = 0.0
        if b"connection: close" in head:
            assert self.transport is not None
            self.transport.close()
        elif not self.closed:
            self.idle.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self in self.idle:
            self.idle.remove(self)
        if self.due:
            self.answers.append(Answer(self.due, 0, time.monotonic() - self.due))
            self.due = 0.0


async def open_loop(
    port: int,
    request: bytes,
    rate: float,
    seconds: float,
    *,
    max_connections: int = 400,
    preopen: int = 0,
) -> list[Answer]:
    """`rate` requests a second for `seconds`, each due at its time whatever came back.

    A request goes out on a free kept-alive connection, or a new one (past `max_connections`
    open at once it waits for one to free up, and its latency, counted from when it was due,
    shows the wait). `preopen` connections are opened before the first request, as wrk does:
    the first request on a new connection pays for the connection too."""
    loop = asyncio.get_running_loop()
    answers: list[Answer] = []
    idle: list[_Client] = []
    clients: list[_Client] = []
    backlog: list[float] = []  # due times waiting for a connection
    opening = 0

    async def connect() -> None:
        nonlocal opening
        try:
            _, client = await loop.create_connection(
                lambda: _Client(answers, idle), "127.0.0.1", port
            )
        except OSError:
            if backlog:
                answers.append(Answer(backlog.pop(0), 0, 0.0))
            return
        finally:
            opening -= 1
        clients.append(client)
        idle.append(client)

    for _ in range(preopen):
        opening += 1
        await connect()
    start = time.monotonic()
    total = int(rate * seconds)
    pending: set[asyncio.Task[None]] = set()
    sent = 0
    while sent < total or backlog:
        now = time.monotonic()
        while sent < total and start + sent / rate <= now:
            backlog.append(start + sent / rate)
            sent += 1
        while backlog and idle:
            idle.pop().send(request, backlog.pop(0))
        live = sum(not c.closed for c in clients) + opening
        for _ in range(min(len(backlog), max_connections - live)):
            opening += 1
            task = asyncio.create_task(connect())
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.sleep(0.0005 if backlog else max(0.0, start + sent / rate - time.monotonic()))
    deadline = time.monotonic() + 30
    while any(c.due for c in clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    return answers


async def probe_loop(
    port: int,
    paths: list[str],
    period: float,
    done: Callable[[], bool],
    *,
    timeout: float = 5.0,
    rounds: int | None = None,
) -> list[Answer]:
    """Each path in turn every `period`, each on a new connection, until `done()` (or
    `rounds` rounds; an answer later than `timeout` counts as none: status 0). The path is in
    each Answer's body."""
    answers: list[Answer] = []
    while not done() and (rounds is None or len(answers) < rounds * len(paths)):
        for path in paths:
            start = time.monotonic()
            status = 0
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
                async with asyncio.timeout(timeout):
                    reader, writer = await _open(port)
                    try:
                        status, _, _ = await _exchange(
                            reader, writer, get_request(path, close=True)
                        )
                    finally:
                        writer.close()
            answers.append(Answer(start, status, time.monotonic() - start, body=path.encode()))
        await asyncio.sleep(period)
    return answers


def open_loop_in_process(
    port: int, request: bytes, rate: float, seconds: float, preopen: int = 0
) -> list[Answer]:
    """`open_loop` in a process of its own (its CPU is not the prober's)."""
    return run(open_loop(port, request, rate, seconds, preopen=preopen))


async def half_headers(
    port: int, count: int, *, connect_timeout: float = 10.0
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`count` connections that each send half a request's headers and stop (those that could
    connect within `connect_timeout`)."""

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                await writer.drain()
                return reader, writer
        return None

    opened = await asyncio.gather(*(one() for _ in range(count)))
    return [w for w in opened if w is not None]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop where installed (the generator must outpace the server)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
