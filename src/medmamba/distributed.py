"""PyTorch DDP glue for ``torchrun``: process group, sharding, rank-0 duties, gathering predictions."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def init_from_env() -> tuple[int, int, torch.device | None]:
    """Join the process group torchrun describes in the environment; (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return get_rank(), get_world_size(), None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return dist.get_rank(), world, torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return dist.get_rank(), world, torch.device("cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier():
    if is_distributed():
        dist.barrier()


def shard_indices(n: int) -> list[int]:
    """This rank's share of 0..n-1 for evaluation: every sample exactly once over all ranks."""
    return list(range(get_rank(), n, get_world_size()))


def gather_in_order(indices, labels: np.ndarray, probs: np.ndarray, n: int):
    """Reassemble per-rank predictions into dataset order."""
    if not is_distributed():
        return labels, probs
    parts = [None] * get_world_size()
    dist.all_gather_object(parts, (list(indices), labels, probs))
    order = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts if len(p[0])])
    all_labels = np.concatenate([p[1] for p in parts if len(p[0])])
    all_probs = np.concatenate([p[2] for p in parts if len(p[0])])
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    return all_labels[inverse], all_probs[inverse]


def all_reduce_mean(value: float) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return (t / get_world_size()).item()


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """Batch norm whose training statistics span every rank's batch, on any device.

    torch's SyncBatchNorm runs on GPUs only; this one uses the differentiable all_reduce of
    torch.distributed.nn, so CPU (gloo) DDP trains exactly like one process with the whole batch.
    """

    def forward(self, x):
        if not (self.training and is_distributed() and get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        dims = (0, 2, 3)
        count = torch.tensor([float(x.numel() // x.shape[1])], dtype=x.dtype)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        stats = all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
            self.running_mean.lerp_(mean.detach(), m)
            self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
            self.num_batches_tracked += 1
        shape = (1, c, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Cross-rank batch statistics: torch's SyncBatchNorm on GPUs, GlobalBatchNorm2d elsewhere."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module
