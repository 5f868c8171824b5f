"""Run by torchrun in tests: the collectives fit relies on, checked on every process (exit 1 on a mismatch)."""
import torch
from torch.utils.data import DataLoader, TensorDataset

from core.train import distributed

distributed.setup(torch.device("cpu"))
rank, world = distributed.rank(), distributed.world()
assert world == 2
# a stop or a non-finite loss seen by one process is seen by all
assert distributed.any_(rank == 1) and not distributed.any_(False)
assert distributed.sum_(1.0, rank) == [2.0, 1.0]
assert distributed.sum_tensor(torch.tensor([[rank, 1]])).tolist() == [[1, 2]]
# shards of 7 rows, padded to 4 each, gathered back in order without the padding
rows = torch.arange(7.0)[:, None] * torch.ones(1, 3)
share = distributed.shard_indices(7)
assert len(share) == 4
assert torch.equal(distributed.gather_shards(rows[share], 7), rows)
# an evaluation share: every image exactly once over the processes
loader = distributed.shard_loader(DataLoader(TensorDataset(torch.arange(7)), batch_size=2))
seen = torch.cat([b for (b,) in loader])
counts = distributed.sum_tensor(torch.bincount(seen, minlength=7))
assert counts.tolist() == [1] * 7, counts
param = torch.nn.Parameter(torch.full((2,), float(rank)))
distributed.broadcast([param])
assert param.tolist() == [0.0, 0.0]
print("ok", rank)
