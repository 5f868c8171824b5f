"""Launching one run on several processes and machines: torchrun's command line on this machine, and the same
run spelled out for a cluster (one command per machine, a Slurm batch script, a Kubernetes PyTorchJob).

We schedule nothing ourselves: torchrun (elastic, c10d rendezvous) starts the processes and restarts the group
after a failure; each process runs the unchanged entry (`python -m core worker` or `python -m core train`), and
torch.distributed tells it its rank (core/train/distributed.py).
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from core import settings
from core.config import DistributedConfig, RunConfig

# Restarted workers hang on torch 2.14 when the agent shares its rendezvous store with them (pytorch issue 135712).
ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
PORT = 29500
CONFIG_FILE = "launch.json"  # in the run folder: the config the CLI hands to torchrun's processes


def needs_torchrun(d: DistributedConfig) -> bool:
    return d.processes > 1


def environment(config: RunConfig) -> dict[str, str]:
    """This process's environment for torchrun, with each worker's share of the run's threads on this machine
    (torchrun would otherwise set OMP_NUM_THREADS=1 and warn)."""
    threads = max(1, (config.threads or settings.cpus()) // config.distributed.nproc)
    return dict(os.environ) | ENV | {"OMP_NUM_THREADS": str(threads)}


def torchrun(d: DistributedConfig, run_id: str, node_rank: int = 0, master: str = "") -> list[str]:
    """torchrun's command line up to the program: this machine alone (a free port of its own), or machine
    `node_rank` of d.nnodes meeting at `master` (HOST:PORT, hosted by node 0)."""
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(d.nproc),
            "--max-restarts", str(d.max_restarts)]
    if d.nnodes == 1 and not master:
        return args + ["--standalone"]
    if not master:
        raise ValueError(f"{d.nnodes} machines need --master HOST:PORT: the address of machine 0, reachable from "
                         "every machine.")
    return args + ["--nnodes", str(d.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", master,
                   "--rdzv-id", rendezvous_id(run_id), "--rdzv-conf", f"is_host={str(node_rank == 0).lower()}"]


def rendezvous_id(name: str) -> str:
    """The same on every machine of one run (from the run folder's name)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)[:64] or "fine-tune-lab"


def train_command(config_file: str, data: str, out: str, d: DistributedConfig, node_rank: str, master: str) -> str:
    """One machine's command: the app's CLI, which starts torchrun there. config_file, node_rank and master are
    shell words as they stand (a script passes variables: "$RUN_CONFIG", $SLURM_NODEID)."""
    return " ".join(["python -m core train", shlex.quote(data), "--out", shlex.quote(out), "--config", config_file,
                     "--nproc", str(d.nproc), "--nnodes", str(d.nnodes), "--max-restarts", str(d.max_restarts),
                     "--node-rank", node_rank, "--master", master])


def commands(config: RunConfig, out: str, master: str = f"HOST0:{PORT}", config_file: str = "config.json") -> list[str]:
    """One command per machine, to run on each at about the same time (machine 0 first is not required)."""
    d = config.distributed
    return [train_command(shlex.quote(config_file), config.data.source, out, d, str(r), shlex.quote(master))
            for r in range(d.nnodes)]


def cluster_config(config: RunConfig) -> RunConfig:
    """The run's config for a cluster's machines: threads and devices are theirs to decide."""
    data = config.to_dict()
    data["threads"], data["device"] = 0, "auto"
    return RunConfig.from_dict(data)


def sbatch(config: RunConfig, out: str, partition: str = "", gpus_per_node: int = 0) -> str:
    """A Slurm batch script: one task per machine (`srun`), each running torchrun through the CLI, rendezvous at
    the first machine of the allocation (pytorch/examples' ddp-tutorial-series/slurm/sbatch_run.sh)."""
    d = config.distributed
    header = [f"#SBATCH --job-name={rendezvous_id(Path(out).name)}", f"#SBATCH --nodes={d.nnodes}",
              "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={max(d.nproc, 2)}"]
    if gpus_per_node:
        header.append(f"#SBATCH --gpus-per-node={gpus_per_node}")
    if partition:
        header.append(f"#SBATCH --partition={partition}")
    command = train_command('"$RUN_CONFIG"', config.data.source, out, d, "$SLURM_NODEID", f'"$HEAD:{PORT}"')
    return "\n".join([
        "#!/bin/bash", *header, "#SBATCH --output=%x-%j.out", "",
        "# Run from the Fine-Tune Lab checkout (its .venv active); DATA and --out on a filesystem every node shares.",
        "set -euo pipefail",
        "export HEAD=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)  # hosts the rendezvous",
        f"export RUN_CONFIG={shlex.quote(out + '.config.json')}",
        "cat > \"$RUN_CONFIG\" <<'CONFIG'", cluster_config(config).to_json(), "CONFIG",
        f"export {' '.join(f'{k}={v}' for k, v in ENV.items())}",
        f"srun bash -c {shlex.quote(command)}", ""])


def kubernetes(config: RunConfig, out: str, image: str = "fine-tune-lab:latest", gpus_per_node: int = 0) -> str:
    """A Kubeflow PyTorchJob (one Master, nnodes - 1 Workers) and the ConfigMap holding the run's config. The
    operator sets MASTER_ADDR, MASTER_PORT and RANK in every pod; DATA and --out on a volume all pods mount."""
    d = config.distributed
    name = rendezvous_id(Path(out).name).lower().strip("-_")[:40] or "fine-tune-lab"
    command = train_command("/config/config.json", config.data.source, out, d, "$RANK", "$MASTER_ADDR:$MASTER_PORT")
    limits = f"\n                  nvidia.com/gpu: {gpus_per_node}" if gpus_per_node else ""

    def replica(kind: str, replicas: int) -> str:
        return f"""    {kind}:
      replicas: {replicas}
      restartPolicy: OnFailure
      template:
        spec:
          containers:
            - name: pytorch
              image: {image}
              command: ["bash", "-c", {_yaml_str(command)}]
              env:{''.join(f'''
                - name: {k}
                  value: "{v}"''' for k, v in ENV.items())}
              resources:
                limits:
                  cpu: "{max(d.nproc, 2)}"{limits}
              volumeMounts:
                - {{name: config, mountPath: /config}}
                - {{name: data, mountPath: /data}}
          volumes:
            - name: config
              configMap: {{name: {name}-config}}
            - name: data
              persistentVolumeClaim: {{claimName: fine-tune-lab-data}}  # holds DATA and the run folder
"""
    config_json = "\n".join("    " + line for line in cluster_config(config).to_json().splitlines())
    workers = replica("Worker", d.nnodes - 1) if d.nnodes > 1 else ""
    return f"""apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}-config
data:
  config.json: |
{config_json}
---
apiVersion: kubeflow.org/v1
kind: PyTorchJob
metadata:
  name: {name}
spec:
  pytorchReplicaSpecs:
{replica("Master", 1)}{workers}"""


def _yaml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
