"""Workers forked from the fork server (core/jobs/forkserver.py): each in a session of its own, with the environment
its job was given, and a fork server that dies is replaced by the next job without losing the one running."""
from __future__ import annotations

import os
import socket

import pytest

from conftest import make_dataset
from core.jobs import forkserver
from core.jobs.registry import JobRegistry
from core.processes import parent_of
from test_engine import small_config
from test_jobs import wait

pytestmark = pytest.mark.integration


def test_a_dead_fork_server_is_replaced_and_its_running_worker_still_reports(tmp_path, workspace):
    data = make_dataset(tmp_path / "data", {"red": 12, "blue": 12})
    registry = JobRegistry(tmp_path / "runs", max_running=2, threads=1)
    long = registry.submit(small_config(data, epochs=30))
    live = wait(registry, long, lambda s: s.epoch >= 1 and s.phase == "train")
    server = forkserver._server[0]
    assert parent_of(live.pid) == server.pid and os.getsid(live.pid) == live.pid  # a fork, in a session of its own

    server.kill()
    server.wait()
    short = wait(registry, registry.submit(small_config(data, epochs=1)), lambda s: not s.active)
    assert short.status == "finished" and forkserver._server[0].pid != server.pid  # a new fork server started it
    assert registry.snapshot(long).status == "running"  # the orphaned worker trains on
    registry.stop(long)
    assert wait(registry, long, lambda s: not s.active, timeout=60).status == "stopped"


def test_a_forked_worker_gets_its_jobs_environment_not_the_fork_servers(tmp_path, workspace, monkeypatch):
    data = make_dataset(tmp_path / "data", {"red": 12, "blue": 12})
    registry = JobRegistry(tmp_path / "runs", threads=1)
    assert wait(registry, registry.submit(small_config(data, epochs=1)), lambda s: not s.active).status == "finished"
    server, path = forkserver._server
    with socket.socket(socket.AF_UNIX) as gone:  # a requester that leaves before its request is whole
        gone.connect(path)
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("FTLAB_HOME", str(elsewhere))  # changed after the fork server started
    config = small_config(data, epochs=1)
    config.model.strategy = "linear-probe"  # its features are cached in the workspace the worker was given
    assert wait(registry, registry.submit(config), lambda s: not s.active).status == "finished"
    assert list((elsewhere / "features").glob("*.pt")) and not (workspace / "features").exists()
    assert forkserver._server[0] is server and server.poll() is None  # the same fork server served it
