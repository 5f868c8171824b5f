"""Workers start as forks of one process that has already imported torch and the engine: a job begins in a
fraction of a second, not in the five an interpreter spends importing torch and torchvision (bench/jobs.py).

The first worker a server starts launches `python -m core.jobs.forkserver SOCKET`, a child of the server that
imports what every worker imports, touches no thread and no tensor, and forks one child per request. Each child is
what `python -m core worker JOB_DIR` would be: a session of its own (it outlives the server), the environment of
the request, stdout and stderr into the job's log. The request's connection stays open and brings
the child's exit status back, so the supervisor polls a forked worker as it polls a Popen. The fork server ends
with the server; its children go on, and the next server re-attaches to them as to any worker (supervisor.py).
A run on several processes is torchrun's to start, not this.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Callable, NoReturn

from core.config import ROOT
from core.processes import process_start_time

START_TIMEOUT_S = 300  # the imports, on a busy machine
_lock = threading.Lock()
_server: tuple[subprocess.Popen, str] | None = None  # this process's fork server and its socket


class Child:
    """A forked worker, polled like a subprocess.Popen. Should the fork server die first (it does not, while the
    server that started both lives), the child is followed by its pid, and its exit status is unknown (0)."""

    def __init__(self, pid: int, conn: socket.socket):
        self.pid, self._conn, self.returncode = pid, conn, None
        conn.setblocking(False)

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        if self._conn is not None:
            try:
                said = self._conn.recv(32)
            except BlockingIOError:
                return None
            self._conn.close()
            self._conn = None
            if said:
                self.returncode = int(said)
                return self.returncode
        if process_start_time(self.pid) is None:
            self.returncode = 0
        return self.returncode


def spawn(job_dir: Path, env: dict[str, str], log: Path) -> Child:
    """`python -m core worker JOB_DIR` as a fork of the fork server (started on first use, and again should it
    have died)."""
    request = json.dumps({"job_dir": str(job_dir), "env": env, "log": str(log)}).encode() + b"\n"
    with _lock:
        conn = _connect()
        try:
            conn.sendall(request)
            pid = int(_read_line(conn))
        except (OSError, ValueError):
            conn.close()
            raise
    return Child(pid, conn)


def _connect() -> socket.socket:
    global _server
    if _server is not None:
        try:
            conn = socket.socket(socket.AF_UNIX)
            conn.connect(_server[1])
            return conn
        except OSError:
            conn.close()
            _server[0].kill()
            _server[0].wait()
    _server = _start()
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(_server[1])
    return conn


def _start() -> tuple[subprocess.Popen, str]:
    path = os.path.join(tempfile.mkdtemp(prefix="ftlab-forkserver-"), "socket")  # a folder of this user's alone
    proc = subprocess.Popen([sys.executable, "-m", "core.jobs.forkserver", path], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE)
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    if not ready or proc.stdout.readline() != b"ready\n":
        proc.kill()
        proc.wait()
        raise OSError(f"the worker fork server did not start within {START_TIMEOUT_S} s (exit code {proc.returncode})")
    return proc, path


def _read_line(conn: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        if not (chunk := conn.recv(1 << 16)):
            raise OSError("the connection to the worker fork server closed mid-line")
        line += chunk
    return line


def serve(path: str) -> None:
    """Import, listen, then fork on each request and send each child's exit status to its requester."""
    from core.jobs import worker  # torch, torchvision, the engine: imported once, here

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C for the server; the server's exit ends this too
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    children: dict[int, socket.socket] = {}
    try:
        while os.getppid() == parent:
            if select.select([listener], [], [], 0.1)[0]:
                conn, _ = listener.accept()
                try:
                    request = json.loads(_read_line(conn))
                except (OSError, ValueError):  # a requester gone before its request was whole: nothing to start
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    _child(worker.run, request, [listener, conn, *children.values()])
                children[pid] = conn
                conn.sendall(f"{pid}\n".encode())
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                if conn := children.pop(pid, None):
                    try:
                        conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())
                    except OSError:  # the supervisor has gone: the status is unknown to it anyway
                        pass
                    conn.close()
    finally:  # the fork server's exit; children never come back here (they leave by os._exit)
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _child(run: Callable[[Path], int], request: dict, inherited: list[socket.socket]) -> NoReturn:
    code = 1
    try:
        for s in inherited:
            s.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()
        os.environ.clear()
        os.environ.update(request["env"])
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.argv = ["python -m core", "worker", request["job_dir"]]
        code = run(Path(request["job_dir"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve(sys.argv[1])
