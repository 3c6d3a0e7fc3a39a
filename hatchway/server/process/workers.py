"""A broker on several processes: API workers beside the primary (``hatchway server --workers N``).

One Python process serves about one core's worth of signed API calls. With ``--workers N`` the
broker process (the *primary*) keeps the listening socket, the nodes' control channels, the
data channels and every background task, and starts N *API workers* that serve the SSM, IAM,
STS and KMS APIs with the same code, store and keys:

* The primary accepts each connection and peeks at its first bytes without reading them. A
  connection whose first request is ``POST /`` (an AWS API call: boto3, the AWS CLI, the
  plugins' TerminateSession) is handed to a worker, round robin, by passing its descriptor over a
  Unix socket (``SCM_RIGHTS``); the worker serves it, keep-alive included. Every other
  connection (websockets, node registration, ``/health``) stays with the primary. Should a
  worker meet a request it does not serve on a connection it was given, it hands the connection
  back with the request's head, and the primary serves it from there.
* What an API call must do where the channels live (TerminateSession closing a data channel,
  DeregisterManagedInstance closing a control channel) the worker asks of the primary over the
  same socket, and answers its client once the primary has done it.
* Caches stay coherent through the store's shared change counters
  (:meth:`~hatchway.server.store.Store.join_processes`): a worker's IAM write, once committed,
  is seen by every process at its next request. On SQLite, writers of all processes serialize on
  one ``flock``. On PostgreSQL every process also follows the other brokers' changes itself
  (:mod:`hatchway.server.store.invalidation`).
* A worker that dies is started again; its clients reconnect as they would to any server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from hatchway.server.base import logs, metrics
from hatchway.server.control.channels import WorkerChannels
from hatchway.server.front import limits, pipeline
from hatchway.server.runtime.state import STATE_KEY, ServerConfig, ServerState
from hatchway.ssm import StartSessionMode

log = logging.getLogger("hatchway.server.workers")

#: Counters shared by the broker's processes (see Store.join_processes).
COUNTERS_FILE = "store-counters"
_API_PREFIXES = (b"POST / ", b"POST /?")
_SNIFF_BYTES = len(_API_PREFIXES[0])
_HAND_BACK_MAX = 64 * 1024  # bytes of body a handed-back request may carry
_MAX_MESSAGE = 256 * 1024


def is_api_start(head: bytes) -> bool | None:
    """True: the connection opens with ``POST /`` (an API call); False: anything else; None:
    too few bytes yet to tell."""
    if any(head.startswith(p) for p in _API_PREFIXES):
        return True
    if len(head) < _SNIFF_BYTES and any(p.startswith(head) for p in _API_PREFIXES):
        return None
    return False


# -- configuration passed to workers ----------------------------------------------------------


def config_to_json(config: ServerConfig) -> str:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, list):
            value = [str(v) for v in value]
        elif isinstance(value, StartSessionMode):
            value = value.value
        out[f.name] = value
    return json.dumps(out)


def config_from_json(text: str) -> ServerConfig:
    raw = json.loads(text)
    raw["data_dir"] = Path(raw["data_dir"])
    raw["scp_files"] = [Path(p) for p in raw["scp_files"]]
    raw["start_session_mode"] = StartSessionMode(raw["start_session_mode"])
    for name in ("tls_cert", "tls_key"):
        if raw.get(name) is not None:
            raw[name] = Path(raw[name])
    return ServerConfig(**raw)


# -- messages on the primary <-> worker socket -----------------------------------------------
# SOCK_SEQPACKET keeps message boundaries. The first byte says what follows:
#   C (primary -> worker, with a descriptor): serve this connection
#   H (worker -> primary, with a descriptor): serve this connection; the rest is the request
#     head the worker already read
#   E (worker -> primary): JSON {"id", "op", "args"}: do this where the channels live
#   A (primary -> worker): JSON {"id", "error"}: done


class _Endpoint:
    """One end of the primary <-> worker socket, on the event loop."""

    def __init__(self, sock: socket.socket, on_message: Callable[[bytes, list[int]], None]) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._on_message = on_message
        self.closed = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, _MAX_MESSAGE, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self.close()
                return
            try:
                self._on_message(data, fds)
            except Exception:
                log.exception("could not handle a message from the other process")
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def send(self, data: bytes, fds: list[int] | None = None, *, wait: bool = True) -> bool:
        """Send one message; False if the peer's buffer is full and ``wait`` is False.
        Messages are small and the peer reads at once: a full buffer means it is stuck, so a
        waiting send gives up (OSError) after 5 s."""
        if not wait:
            try:
                socket.send_fds(self.sock, [data], fds or [])
            except (BlockingIOError, InterruptedError):
                return False
            return True
        self.sock.setblocking(True)
        try:
            self.sock.settimeout(5.0)
            socket.send_fds(self.sock, [data], fds or [])
        finally:
            self.sock.setblocking(False)
        return True

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if not self.closed.done():
            self.closed.set_result(None)


_REFRAMED = frozenset({b"transfer-encoding", b"content-length", b"expect"})


def _replay_of(request: web.Request, body: bytes) -> bytes:
    """The request as the primary should read it, for handing the connection back: its head
    as the client sent it, except that the body (already read, and de-chunked) is framed
    anew by its length, and an ``Expect: 100-continue`` the worker already answered is
    dropped."""
    v = request.version
    lines = [f"{request.method} {request.raw_path} HTTP/{v.major}.{v.minor}".encode("latin-1")]
    lines += [
        name + b": " + value for name, value in request.raw_headers if name.lower() not in _REFRAMED
    ]
    if body or request.method not in ("GET", "HEAD"):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- the primary ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    link: _Endpoint


class WorkerPool:
    """The primary's API workers: started, fed connections, asked nothing, restarted."""

    def __init__(
        self,
        state: ServerState,
        count: int,
        serve_here: Callable[[socket.socket, bytes], Awaitable[None]],
    ) -> None:
        self.state = state
        self.count = count
        self._serve_here = serve_here
        self._workers: dict[int, _Worker] = {}
        self._next = itertools.cycle(range(1, count + 1))
        self._stopping = False
        self._monitor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for index in range(1, self.count + 1):
            self._spawn(index)
        self._monitor = asyncio.create_task(self._watch())

    def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = self.state.config
        argv = [
            sys.executable,
            "-m",
            "hatchway.server.process.workers",
            "--fd",
            str(theirs.fileno()),
            "--index",
            str(index),
            "--count",
            str(self.count + 1),
            "--config",
            config_to_json(config),
            "--log-level",
            logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        ]
        proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()])
        theirs.close()
        link = _Endpoint(ours, lambda data, fds: self._message(index, data, fds))
        self._workers[index] = _Worker(index, proc, link)

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            for index, worker in list(self._workers.items()):
                if worker.proc.poll() is not None and not self._stopping:
                    log.error(
                        "API worker %s exited (status %s); starting it again",
                        index,
                        worker.proc.returncode,
                    )
                    worker.link.close()
                    # It may have died between a commit and publishing that change.
                    self.state.store.invalidate_all()
                    self._spawn(index)

    def dispatch(self, conn: socket.socket, head: bytes) -> bool:
        """Give ``conn``, whose first bytes ``head`` were read, to a worker (False: none could
        take it; the caller serves it)."""
        for _ in range(self.count):
            worker = self._workers.get(next(self._next))
            if worker is None or worker.proc.poll() is not None or worker.link.closed.done():
                continue
            try:
                if not worker.link.send(b"C" + head, [conn.fileno()], wait=False):
                    continue  # busy: the next one (the primary itself, if all are)
            except OSError:
                continue
            conn.close()  # the worker holds its own descriptor now
            return True
        return False

    def _message(self, index: int, data: bytes, fds: list[int]) -> None:
        kind, body = data[:1], data[1:]
        if kind == b"H" and len(fds) == 1:
            sock = socket.socket(fileno=fds[0])
            self._spawn_task(self._serve_here(sock, body))
        elif kind == b"E":
            for fd in fds:
                os.close(fd)
            worker = self._workers.get(index)
            if worker is not None:
                self._spawn_task(self._effect(worker, json.loads(body)))
        else:
            for fd in fds:
                os.close(fd)
            log.warning("API worker %s sent an unknown message", index)

    def _spawn_task(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _effect(self, worker: _Worker, msg: dict[str, Any]) -> None:
        """Do what ``worker`` asked; the answer goes to that process (not a replacement)."""
        error: str | None = None
        try:
            await run_effect(self.state, msg["op"], msg["args"])
        except Exception as exc:
            log.exception("effect %s asked by API worker %s failed", msg.get("op"), worker.index)
            error = str(exc) or type(exc).__name__
        if not worker.link.closed.done():
            with contextlib.suppress(OSError):
                worker.link.send(b"A" + json.dumps({"id": msg["id"], "error": error}).encode())

    async def stop(self) -> None:
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        for worker in self._workers.values():
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self._workers.values():
            try:
                await asyncio.to_thread(worker.proc.wait, 30)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
            worker.link.close()


async def run_effect(state: ServerState, op: str, args: list[Any]) -> None:
    """Do, in this process, what an API call asked of the process holding the channels."""
    from hatchway.server.control.channels import run_local

    await run_local(state.channels, op, args)


class _Pending(limits.Held):
    """A connection the primary accepted and reads the first bytes of, to route it."""

    def __init__(self, listener: Listener, conn: socket.socket) -> None:
        self.listener = listener
        self.conn = conn
        self.fd = conn.fileno()
        self.head = b""
        self.timer: asyncio.TimerHandle | None = None

    def evict(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(limits.TOO_MANY)
        self.listener._drop(self.fd)


class Listener:
    """The primary's listening socket: API connections to the workers, the rest served here.

    A new connection's first bytes are read (not peeked: a connection that sent too few to
    route is then not readable again until it sends more, so nothing polls it) and handed on
    with it; it must route itself within the header deadline, and it counts against the
    connection caps meanwhile."""

    def __init__(
        self,
        sock: socket.socket,
        runner: web.AppRunner,
        pool: WorkerPool,
        guard: limits.ConnectionGuard,
    ) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._runner = runner
        self._pool = pool
        self._guard = guard
        self._pending: dict[int, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for fd in list(self._pending):
            self._drop(fd)

    def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(64):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, …: try again on the next event
                log.warning("accept failed: %s", exc)
                return
            conn.setblocking(False)
            pending = _Pending(self, conn)
            address = limits.normalize(str(addr[0])) if isinstance(addr, tuple) else ""
            # A trusted proxy's connections count under their forwarded client, later.
            counted = None if address in self._guard.proxies else address
            if not self._guard.admit(pending, counted):
                with contextlib.suppress(OSError):
                    conn.send(limits.TOO_MANY)
                conn.close()
                continue
            seconds = self._guard.config.header_timeout or 3600.0
            pending.timer = loop.call_later(seconds, self._drop, pending.fd)
            self._pending[pending.fd] = pending
            loop.add_reader(pending.fd, self._sniff, pending.fd)

    def _forget(self, fd: int) -> _Pending | None:
        pending = self._pending.pop(fd, None)
        if pending is None:
            return None
        if pending.timer is not None:
            pending.timer.cancel()
        self._guard.release(pending)
        asyncio.get_running_loop().remove_reader(fd)
        return pending

    def _drop(self, fd: int) -> None:
        pending = self._forget(fd)
        if pending is not None:
            pending.conn.close()

    def _sniff(self, fd: int) -> None:
        pending = self._pending.get(fd)
        if pending is None:
            return
        try:
            data = pending.conn.recv(_SNIFF_BYTES - len(pending.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        pending.head += data
        head = pending.head
        if limits.PROXY_V2_SIGNATURE.startswith(head[: len(limits.PROXY_V2_SIGNATURE)]):
            verdict: bool | None = False  # a PROXY header: served here, where it is read
        else:
            verdict = is_api_start(head)
        if verdict is None:
            return  # too few bytes yet: readable again when more arrive
        self._forget(fd)
        if verdict and self._pool.dispatch(pending.conn, head):
            return
        task = asyncio.ensure_future(self.serve(pending.conn, head))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve(self, conn: socket.socket, head: bytes) -> None:
        """Serve ``conn`` with this process's application (after ``head``, if any)."""
        factory = self._guard.wrap(self._runner.server, head)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(factory, conn)
        except OSError:
            conn.close()


# -- a worker -------------------------------------------------------------------------------


class PrimaryLink:
    """A worker's requests to the primary (see :func:`run_effect`)."""

    def __init__(self, endpoint_factory: Callable[[PrimaryLink], _Endpoint]) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[str | None]] = {}
        self.endpoint = endpoint_factory(self)

    async def call(self, op: str, *args: Any) -> None:
        call_id = next(self._ids)
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = done
        try:
            self.endpoint.send(b"E" + json.dumps({"id": call_id, "op": op, "args": args}).encode())
            error = await asyncio.wait_for(done, 30)
        finally:
            self._waiting.pop(call_id, None)
        if error is not None:
            raise RuntimeError(f"the primary could not {op}: {error}")

    def answered(self, body: bytes) -> None:
        msg = json.loads(body)
        done = self._waiting.get(msg["id"])
        if done is not None and not done.done():
            done.set_result(msg["error"])


def worker_app(state: ServerState, hand_back: pipeline.Handler) -> web.Application:
    """An API worker's application: the API and /health, through the same pipeline as the
    primary's; anything else goes back to the primary (``hand_back``)."""
    from hatchway.server.app import add_api_route, handle_health

    app = web.Application(
        client_max_size=4 * 1024 * 1024, middlewares=pipeline.middlewares(guard=True)
    )
    app[STATE_KEY] = state
    add_api_route(app)
    app.router.add_get("/health", handle_health, name="hatchway:Health")
    app.router.add_route("*", "/{tail:.*}", hand_back, name="hatchway:HandBack")
    return app


async def _worker_main(fd: int, index: int, count: int, config: ServerConfig) -> None:
    from hatchway.server.app import open_state
    from hatchway.server.base.crypto import SecretBox
    from hatchway.server.ops import register_all
    from hatchway.server.process.boot import load_scps, settle_memory
    from hatchway.server.store import Store

    register_all()
    store = Store(config.store_url)
    store.join_processes(config.data_dir / COUNTERS_FILE, index, count)
    store.follow_changes()  # other brokers' writes (PostgreSQL)
    scps: Any = load_scps(config.scp_files)
    state = open_state(config, store, SecretBox.from_dir(config.data_dir), scps)
    guard = limits.install(config)
    loop = asyncio.get_running_loop()
    runner_box: list[web.AppRunner] = []

    def on_message(link: PrimaryLink, data: bytes, fds: list[int]) -> None:
        kind, body = data[:1], data[1:]
        if kind == b"C" and len(fds) == 1:
            conn = socket.socket(fileno=fds[0])
            conn.setblocking(False)
            factory = guard.wrap(runner_box[0].server, body)
            task = asyncio.ensure_future(loop.connect_accepted_socket(factory, conn))

            def opened(t: asyncio.Future[Any]) -> None:
                if t.cancelled() or t.exception() is not None:
                    conn.close()

            task.add_done_callback(opened)
        elif kind == b"A":
            for extra in fds:
                os.close(extra)
            link.answered(body)
        else:
            for extra in fds:
                os.close(extra)

    def endpoint(lk: PrimaryLink) -> _Endpoint:
        return _Endpoint(socket.socket(fileno=fd), lambda d, f: on_message(lk, d, f))

    link = PrimaryLink(endpoint)
    state.link = link
    state.channels = WorkerChannels(link)

    async def hand_back(request: web.Request) -> web.StreamResponse:
        """A request the workers do not serve, on a connection the primary gave: return the
        connection, with what was read of it, to the primary."""
        transport = request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if transport is None or sock is None:
            raise web.HTTPServiceUnavailable()
        if (request.content_length or 0) > _HAND_BACK_MAX:
            raise web.HTTPRequestEntityTooLarge(
                max_size=_HAND_BACK_MAX, actual_size=request.content_length or 0
            )
        body = await request.read()
        if len(body) > _HAND_BACK_MAX:
            raise web.HTTPRequestEntityTooLarge(max_size=_HAND_BACK_MAX, actual_size=len(body))
        dup = os.dup(sock.fileno())
        try:
            link.endpoint.send(b"H" + _replay_of(request, body), [dup])
        finally:
            os.close(dup)
        transport.abort()  # the primary's descriptor keeps the connection open
        request[pipeline.HANDED_BACK] = True  # the primary logs it when it serves it
        return web.Response()

    app = worker_app(state, hand_back)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)  # main.SHUTDOWN_TIMEOUT
    await runner.setup()
    runner_box.append(runner)
    audit = asyncio.create_task(state.audit_log.run())
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    settle_memory()
    closed = asyncio.ensure_future(link.endpoint.closed)
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait([closed, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    await runner.cleanup()
    audit.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await audit
    state.audit_log.close()
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description="A Hatchway API worker (started by the broker).")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args()
    config = config_from_json(args.config)
    metrics.multiprocess(config.data_dir / "metrics", clear=False)  # main.METRICS_DIR
    logs.configure(
        args.log_level,
        config.log_format,
        f"%(asctime)s %(levelname)s %(name)s[worker {args.index}]: %(message)s",
    )
    logs.set_access_log(config.access_log)
    asyncio.run(_worker_main(args.fd, args.index, args.count, config))


if __name__ == "__main__":
    main()
