"""Several processes, one training: PyTorch's DistributedDataParallel, started by torchrun.

`torchrun --nproc_per_node=N -m cnntrain ...` starts N copies of cnntrain with RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous address in their environment; `join_group`
turns that into a process group (nccl for CUDA tensors, gloo for CPU ones).
`trainer.strategy` says what to do with it: `auto` (DDP when started by torchrun with
more than one process), `ddp` (DDP even in one process) or `single` (refuse torchrun).

`Group` is what the rest of the code asks: this process's rank, the number of
processes, whether it writes the run folder (rank 0 only), and the few collectives a
run needs (sums of metric counters, "does any rank want to stop", a barrier). For a
plain single-process run every call is a no-op (`Group.single()`).

How the work is divided (see data/loader.py): `data.batch_size` is the global batch;
every rank walks the same seeded order of the training set and takes its share of each
global batch (every world-th example), so one optimizer step sees the same examples as
in one process. Evaluation splits are divided without padding, and the counters are
summed across ranks, so no example is counted twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from cnntrain.errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the CLI asks launched_by_torchrun() before torch is needed.

STRATEGIES = ("auto", "ddp", "single")
# A rank that dies leaves the others waiting in a collective: torchrun ends them, and this
# bounds the wait when something else (a debugger, a hung filesystem) keeps a rank away.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def launched_by_torchrun() -> int:
    """The number of processes torchrun started (WORLD_SIZE), 0 when not started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "0")) if "LOCAL_RANK" in os.environ else 0


def process_rank() -> int:
    """This process's rank when torchrun started it (RANK), else 0: known before the group is joined."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def join_group() -> None:
    """Join torchrun's process group (idempotent): gloo for CPU tensors, and nccl for CUDA ones when there is a GPU."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if "MASTER_ADDR" not in os.environ:  # trainer.strategy=ddp in a process that torchrun did not start
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
        )
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def from_rank_zero(make: Callable[[], Any]) -> Any:
    """`make()` on rank 0, its result given to every rank (a collective: every rank calls it)."""
    import torch.distributed as dist

    value = [make() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(value, src=0)
    return value[0]


def lost_peer(err: BaseException) -> bool:
    """Whether `err` is a collective that failed because another process left (died, was killed, stopped)."""
    import torch.distributed as dist

    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        sign in text
        for sign in ("Connection reset by peer", "Connection closed by peer", "gloo/transport", "NCCL communicator")
    )


@dataclass(frozen=True)
class Group:
    """The processes of one training; `Group.single()` for a plain run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    ddp: bool = False  # the model is wrapped in DistributedDataParallel

    @classmethod
    def single(cls) -> Group:
        return cls()

    @property
    def writes(self) -> bool:
        """Rank 0 writes the run folder, prints the display and saves checkpoints; the others only train."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """Each process of a multi-GPU run on its own GPU (LOCAL_RANK)."""
        import torch

        if self.ddp and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def sum(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """The tensors summed over every rank (each rank gets the sums)."""
        if not self.ddp:
            return list(tensors)
        import torch
        import torch.distributed as dist

        stacked = torch.stack([t.to(torch.float64) for t in tensors])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return [value.to(t.dtype) for value, t in zip(stacked, tensors)]

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on some rank (a stop request, a checkpoint due)."""
        if not self.ddp:
            return flag
        import torch
        import torch.distributed as dist

        value = torch.tensor(int(flag), device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def share(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a collective: every rank calls it), e.g. a time limit's plan."""
        return from_rank_zero(lambda: value) if self.ddp else value

    def barrier(self) -> None:
        """Wait until every rank got here (e.g. rank 0 has written the checkpoint the others read next)."""
        if self.ddp:
            import torch.distributed as dist

            dist.barrier()


def group_for(strategy: str) -> Group:
    """The process group trainer.strategy asks for, joined (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"trainer.strategy must be one of {', '.join(STRATEGIES)}, got '{strategy}'.")
    started = launched_by_torchrun()
    if strategy == "single" and started > 1:
        raise ConfigError(
            f"trainer.strategy=single, but torchrun started {started} processes: start cnntrain "
            f"without torchrun, or use trainer.strategy=auto for DistributedDataParallel."
        )
    if strategy == "auto" and started <= 1:
        return Group.single()
    if strategy == "single":
        return Group.single()
    import torch.distributed as dist

    join_group()
    return Group(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        ddp=True,
    )
