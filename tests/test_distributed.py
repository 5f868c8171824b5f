"""One run on several processes and "machines" under torchrun: loopback only, CPU and gloo, real training.

Tolerances: with no augmentation or dropout, N processes of batch B/N see exactly the global batches of one process
of batch B (samplers.py) and DDP averages their gradients, so a head trained on features differs from the
one-process run only by the order of float additions: 1e-5 on losses is ~100x that rounding and far below any
real difference (a wrong sampler or an unsynchronised group moves losses by 1e-2). Batch norm in training mode
normalises over each process's B/N images, so a full fine-tune matches one process only while batch norm is
frozen (gradual unfreezing's first epoch).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import make_dataset, still_running
from core import runs
from core.config import ROOT, RunConfig
from core.data import samplers
from core.jobs import launch
from core.jobs.registry import JobRegistry
from core.processes import descendants, process_start_time
from core.train.engine import fit
from test_engine import small_config
from test_jobs import wait

pytestmark = pytest.mark.distributed


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "data", {"red": 12, "blue": 12, "green": 12})


def env(workspace) -> dict:
    return dict(os.environ, FTLAB_HOME=str(workspace), PYTHONPATH=str(ROOT)) | launch.ENV


def probe_config(data) -> RunConfig:
    """A head trained by the loop on features the processes extract together."""
    config = small_config(data, epochs=3, lr=0.01, solver="loop")
    config.model.strategy = "linear-probe"
    return config


def rows(run: Path) -> list[dict]:
    return runs.read_jsonl(run / "metrics.jsonl")


def assert_same_metrics(a: list[dict], b: list[dict], keys=("train_loss", "val_loss", "val_acc"), tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in keys:
            assert x[k] == pytest.approx(y[k], abs=tol), (k, x, y)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_processes_take_the_global_batch_between_them():
    """Process r's k-th batch of B/N is its share of one process's k-th batch of B: the same global batches."""
    items, batch = list(range(22)), 8
    one = list(samplers.shuffled(items, seed=5))
    for world in (2, 4):
        shares = [list(samplers.shuffled(items, seed=5, rank=r, world=world)) for r in range(world)]
        for k in range(len(items) // batch):
            got = sorted(i for share in shares for i in share[k * batch // world:(k + 1) * batch // world])
            assert got == sorted(one[k * batch:(k + 1) * batch])
    labels = [0] * 18 + [1] * 4
    one = list(samplers.Balanced(labels, 2, seed=3))
    two = [list(samplers.Balanced(labels, 2, seed=3, rank=r, world=2)) for r in range(2)]
    assert sorted(two[0] + two[1]) == sorted(one) and sum(labels[i] for i in one) > 6  # the minority drawn often
    sampler = samplers.Balanced(labels, 2, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != one


def test_the_collectives_agree_sum_and_gather_across_processes(tmp_path, workspace):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(ROOT / "tests" / "ddp_collectives.py")], env=env(workspace), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.count("ok") == 2, done.stderr[-3000:]


def torchrun_fit(config: RunConfig, tmp_path: Path, name: str, workspace: Path, nproc: int = 2) -> Path:
    """fit on nproc processes (tests/ddp_fit.py saves each process's final parameters beside the run)."""
    config_file = tmp_path / f"{name}.json"
    config_file.write_text(config.to_json())
    run = tmp_path / name
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               str(ROOT / "tests" / "ddp_fit.py"), str(config_file), str(run)]
    done = subprocess.run(command, env=env(workspace), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_two_processes_end_identical_and_match_one_process(tmp_path, data, workspace, monkeypatch):
    run = torchrun_fit(probe_config(data), tmp_path, "two", workspace)
    alone = tmp_path / "alone"  # a workspace of its own: the one process computes its features itself
    monkeypatch.setenv("FTLAB_HOME", str(alone))
    one = fit(probe_config(data), tmp_path / "one")
    assert runs.read_json(run / "status.json")["status"] == "finished"
    # the processes computed a share of the features each; gathered, they are the one process's, in its order
    assert runs.read_json(run / "config.json")["provenance"]["features"]["engine"] != "cached"
    (shared,), (own,) = (list((root / "features").glob("*.pt")) for root in (workspace, alone))
    shared, own = (torch.load(f, weights_only=True) for f in (shared, own))
    assert shared["paths"] == own["paths"] and torch.allclose(shared["features"], own["features"], atol=1e-5)
    assert_same_metrics(rows(run), one.history)
    rank0, rank1 = (load_file(str(tmp_path / f"two-rank{r}.safetensors")) for r in (0, 1))
    for key, value in one.model.named_parameters():
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.allclose(rank0[key], value.detach(), atol=1e-5), key
    assert runs.read_json(run / "config.json")["provenance"]["processes"] == 2
    # rank 0 alone wrote the run folder: one row per epoch, held-out predictions once
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3]
    assert len(runs.read_jsonl(run / "predictions.jsonl")) == 9


def test_gradual_unfreezing_rewraps_so_every_group_stays_in_sync(tmp_path, data, workspace):
    """DDP reduces only what required grad when it was built: without a new wrap when stage 4 unfreezes, its
    gradients would stay per-process and the processes would drift apart."""
    config = small_config(data, epochs=3)
    config.model.strategy, config.model.unfreeze_every = "gradual", 1
    config.regularize.class_weighting = "sampler"  # the balanced sampler, shared by the processes
    run = torchrun_fit(config, tmp_path, "gradual", workspace)
    one = fit(config, tmp_path / "one")
    rank0, rank1 = (load_file(str(tmp_path / f"gradual-rank{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert_same_metrics(rows(run)[:1], one.history[:1])  # epoch 1: head only, batch norm frozen
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3]


def test_two_machines_on_loopback(tmp_path, data, workspace):
    """Two CLI invocations, as on two machines (--nnodes 2), meet at one address and train one run."""
    one = fit(probe_config(data), tmp_path / "one")
    config_file = tmp_path / "c.json"
    config_file.write_text(probe_config(data).to_json())
    master = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([sys.executable, "-m", "core", "train", str(data), "--out", str(tmp_path / "run"),
                               "--config", str(config_file), "--nnodes", "2", "--nproc", "1", "--node-rank", str(r),
                               "--master", master, "--quiet"], cwd=ROOT, env=env(workspace),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [n.communicate(timeout=240) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs
    assert runs.read_json(tmp_path / "run" / "status.json")["status"] == "finished"
    assert_same_metrics(rows(tmp_path / "run"), one.history)


def worker_pids(launcher: int) -> list[int]:
    """torchrun's worker processes below a launcher (not torchrun itself)."""
    found = []
    for pid in descendants(launcher):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"core" in cmd and b"torch.distributed.run" not in cmd:
            found.append(pid)
    return found


@pytest.fixture
def larger(tmp_path):
    """Epochs of about a second on two processes: long enough to act in the middle of one."""
    return make_dataset(tmp_path / "larger", {"red": 40, "blue": 40}, size=(64, 64))


def larger_config(data, epochs: int) -> RunConfig:
    config = small_config(data, epochs=epochs)
    config.augment.image_size = 64
    return config


def start_cli(config: RunConfig, run: Path, workspace: Path, *flags: str) -> subprocess.Popen:
    """`python -m core train --nproc 2`, as a user types it; it becomes torchrun."""
    config_file = run.parent / f"{run.name}.json"
    config_file.write_text(config.to_json())
    return subprocess.Popen([sys.executable, "-m", "core", "train", config.data.source, "--out", str(run), "--config",
                             str(config_file), "--nproc", "2", *flags], cwd=ROOT, env=env(workspace),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_an_epoch(run: Path) -> None:
    deadline = time.time() + 120
    while not rows(run) and time.time() < deadline:
        time.sleep(0.05)
    assert rows(run), "no epoch finished"


def test_a_killed_process_is_restarted_and_the_run_completes(tmp_path, larger, workspace):
    run = tmp_path / "run"
    cli = start_cli(larger_config(larger, 5), run, workspace, "--max-restarts", "1")
    wait_for_an_epoch(run)
    victims = worker_pids(cli.pid)
    assert len(victims) == 2
    os.kill(victims[-1], signal.SIGKILL)  # a process dies in epoch 2
    out, err = cli.communicate(timeout=240)
    assert cli.returncode == 0, err[-3000:]
    assert "Resumed after epoch" in err
    assert runs.read_json(run / "status.json")["status"] == "finished"
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3, 4, 5]
    assert all(process_start_time(p) is None for p in victims)


def test_a_stop_seen_by_one_process_or_early_stopping_ends_every_process(tmp_path, larger, workspace):
    run = tmp_path / "stopped"
    cli = start_cli(larger_config(larger, 30), run, workspace)
    wait_for_an_epoch(run)
    processes = [cli.pid, *descendants(cli.pid)]
    os.kill(worker_pids(cli.pid)[-1], signal.SIGTERM)  # rank 1 alone is asked to stop
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err[-3000:]
    assert runs.read_json(run / "status.json")["status"] == "stopped" and len(rows(run)) < 30
    assert [p for p in processes if process_start_time(p) is not None] == []
    # every process finds no improvement at the same epoch (the metrics are the summed ones) and leaves together
    early = start_cli(larger_config(larger, 30), tmp_path / "early", workspace, "--patience", "1", "--min-delta", "10")
    out, err = early.communicate(timeout=120)
    assert early.returncode == 0, err[-3000:]
    assert [r["epoch"] for r in rows(tmp_path / "early")] == [1, 2] and "Early stopping" in err


def test_the_app_follows_stops_and_resumes_a_run_on_two_processes(tmp_path, larger, workspace):
    registry = JobRegistry(tmp_path / "runs", threads=2)
    config = larger_config(larger, 30)
    config.distributed.nproc = 2
    job_id = registry.submit(config)
    live = wait(registry, job_id, lambda s: len(s.history) >= 1 and s.phase == "train" and s.batch >= 1)
    assert live.confusion is not None and live.batch_losses and live.classes == ("blue", "red")
    snap = registry.snapshot(job_id)
    processes = [snap.pid, *descendants(snap.pid)]
    assert len(worker_pids(snap.pid)) == 2
    registry.stop(job_id)
    done = wait(registry, job_id, lambda s: not s.active, timeout=60)
    assert done.status == "stopped"
    assert still_running(processes) == []  # no process left behind
    assert runs.read_json(done.run_dir / "status.json")["status"] == "stopped"
    stopped_at = len(rows(done.run_dir))
    assert stopped_at < 30  # stopped mid-run, not at its end
    config.optim.epochs = stopped_at + 1
    resumed = registry.submit(config, resume_dir=done.run_dir)
    final = wait(registry, resumed, lambda s: not s.active, timeout=120)
    assert final.status == "finished"
    assert [r["epoch"] for r in rows(done.run_dir)] == list(range(1, stopped_at + 2))


def test_cluster_commands_scripts_and_manifests_carry_the_run(tmp_path, data):
    config = probe_config(data)
    config.distributed.nnodes, config.distributed.nproc, config.distributed.max_restarts = 3, 4, 2
    config.optim.batch_size, config.threads, config.device = 24, 1, "cpu"  # this machine's, not the cluster's
    out = "/shared/runs/exp-1"
    lines = launch.commands(config, out, "10.0.0.5:29500")
    assert len(lines) == 3 and all("--master 10.0.0.5:29500" in line and "--nnodes 3" in line and "--nproc 4" in line
                                   for line in lines)
    assert [line.split("--node-rank ")[1].split()[0] for line in lines] == ["0", "1", "2"]
    script = launch.sbatch(config, out)
    assert "#SBATCH --nodes=3" in script and "srun" in script and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in script
    embedded = script.split("<<'CONFIG'\n")[1].split("\nCONFIG")[0]
    assert RunConfig.from_json(embedded).optim.batch_size == 24
    docs = list(yaml.safe_load_all(launch.kubernetes(config, out)))
    configmap, job = docs
    shipped = RunConfig.from_json(configmap["data"]["config.json"])
    assert shipped.distributed.nnodes == 3 and (shipped.threads, shipped.device) == (0, "auto")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    command = replicas["Worker"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "--node-rank $RANK" in command and "--master $MASTER_ADDR:$MASTER_PORT" in command
    cli = subprocess.run([sys.executable, "-m", "core", "train", str(data), "--out", out, "--nnodes", "2",
                          "--print", "commands"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and cli.stdout.count("python -m core train") == 2
    with pytest.raises(ValueError, match="--master"):
        launch.torchrun(config.distributed, "x")


def test_settings_several_processes_cannot_honour_are_refused(tmp_path, data, workspace):
    config = small_config(data)
    config.distributed.sync_bn = True
    with pytest.raises(ValueError, match="sync_bn"):
        fit(config, tmp_path / "run")
    registry = JobRegistry(tmp_path / "runs", threads=1)
    config.distributed.sync_bn, config.distributed.nnodes = False, 2
    with pytest.raises(ValueError, match="several machines"):
        registry.submit(config)
    cv = subprocess.run([sys.executable, "-m", "core", "cv", str(data), "--out", str(tmp_path / "cv"), "--folds", "2",
                         "--nproc", "2"], cwd=ROOT, env=env(workspace), capture_output=True, text=True, timeout=60)
    assert cv.returncode == 2 and "apply to train only" in cv.stderr


def test_ray_job_submit_runs_the_cli(tmp_path, data, workspace):
    """Documented route (README): `ray job submit -- python -m core train ... --nproc N` on a Ray cluster."""
    pytest.importorskip("ray")
    from ray.job_submission import JobSubmissionClient  # noqa: F401 (a local cluster is started below)

    subprocess.run(["ray", "start", "--head", "--num-cpus", "2"], check=True, timeout=120)
    try:
        done = subprocess.run(["ray", "job", "submit", "--", sys.executable, "-m", "core", "train", str(data), "--out",
                               str(tmp_path / "run"), "--epochs", "1", "--nproc", "2"], cwd=ROOT, env=env(workspace),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "finished"
    finally:
        subprocess.run(["ray", "stop"], timeout=120)


def test_the_slurm_script_runs_the_cli_on_every_node_with_its_rank(tmp_path, data):
    """The sbatch script under bash, with srun, scontrol and python standing in for a 2-node allocation: every node
    runs the CLI with its node rank, the first node as rendezvous, and the embedded config written where it says."""
    config = probe_config(data)
    config.distributed.nnodes = 2
    fake = tmp_path / "bin"
    fake.mkdir()
    tools = {"srun": 'for n in 0 1; do SLURM_NODEID=$n "$@"; done',
             "scontrol": "echo nodeA; echo nodeB",
             "python": 'echo "$TORCH_DISABLE_SHARE_RDZV_TCP_STORE $*" >> "$CALLS"'}
    for name, body in tools.items():
        (fake / name).write_text(f"#!/bin/bash\n{body}\n")
        (fake / name).chmod(0o755)
    script = tmp_path / "job.sbatch"
    script.write_text(launch.sbatch(config, str(tmp_path / "run one")))
    calls = tmp_path / "calls.txt"
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", CALLS=str(calls),
                                   SLURM_JOB_NODELIST="nodeA,nodeB"))
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert line.startswith("1 -m core train") and f"--node-rank {rank} --master nodeA:29500" in line
        assert f"--out {tmp_path}/run one --config" in line
        assert line.split("--config ")[1].split(" --nproc")[0] == f"{tmp_path}/run one.config.json"
    written = Path(f"{tmp_path}/run one.config.json")
    assert RunConfig.from_json(written.read_text()).distributed.nnodes == 2


def test_the_kubernetes_pods_run_the_cli_with_the_rank_the_operator_gives(tmp_path, data):
    """Each pod's command under bash, with the environment Kubeflow's PyTorchJob sets and python standing in."""
    config = probe_config(data)
    config.distributed.nnodes = 2
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/bash\necho "$TORCH_DISABLE_SHARE_RDZV_TCP_STORE $*" >> "$CALLS"\n')
    (fake / "python").chmod(0o755)
    _, job = yaml.safe_load_all(launch.kubernetes(config, "/data/runs/exp"))
    calls = tmp_path / "calls.txt"
    for kind, rank in (("Master", 0), ("Worker", 1)):
        container = job["spec"]["pytorchReplicaSpecs"][kind]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"]}
        done = subprocess.run(container["command"], capture_output=True, text=True, timeout=30, env=dict(
            os.environ, **env, PATH=f"{fake}:{os.environ['PATH']}", CALLS=str(calls), RANK=str(rank),
            MASTER_ADDR="exp-master-0", MASTER_PORT="23456"))
        assert done.returncode == 0, done.stderr
    for rank, line in enumerate(calls.read_text().splitlines()):
        assert line.startswith("1 -m core train") and "--out /data/runs/exp --config /config/config.json" in line
        assert f"--nnodes 2 --max-restarts 0 --node-rank {rank} --master exp-master-0:23456" in line
