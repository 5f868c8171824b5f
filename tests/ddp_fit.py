"""Run by torchrun in tests: fit on every process, then each process saves the parameters it ended with, so a test
can compare what the processes hold (fit itself writes only rank 0's)."""
import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from core.config import RunConfig
from core.train.engine import fit

config_file, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
result = fit(RunConfig.from_json(config_file.read_text()), run_dir)
rank = dist.get_rank() if dist.is_initialized() else 0
save_file({k: v.detach().contiguous() for k, v in result.model.named_parameters()},
          str(run_dir.parent / f"{run_dir.name}-rank{rank}.safetensors"))
