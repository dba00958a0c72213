"""torchrun support: which rank this process is, and the few collectives training needs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from generate.errors import UserError

T = TypeVar("T")

# The other ranks wait in a collective while rank 0 tokenizes the dataset; a big MIDI folder can
# take longer than NCCL's default 10 minutes. So set-up talks over a group of its own with this
# timeout, and training's collectives use train.dist_timeout_minutes (a frozen rank ends the job).
SETUP_TIMEOUT = timedelta(hours=1)
_setup_group: Any = None
PEER_FAILURES = ("Timed out", "Connection closed by peer", "Connection reset by peer", "gloo/transport")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; rank 0 of world size 1 when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device, timeout_minutes: float = 5.0) -> tuple[Dist, torch.device]:
    """Join the torchrun job (NCCL on CUDA, gloo on CPU) → (Dist, this rank's device).

    torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them, or
    with a world of one, this is a plain single process and no process group is created.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"local rank {local_rank} has no GPU (this node has {torch.cuda.device_count()}); "
                "set torchrun's --nproc_per_node to at most the number of GPUs per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    global _setup_group
    if not dist.is_initialized():
        timeout = timedelta(minutes=timeout_minutes)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        _setup_group = dist.new_group(backend="gloo", timeout=SETUP_TIMEOUT)  # CPU objects only
    return Dist(rank, world_size, local_rank), device


@contextmanager
def peers_watched(d: Dist, timeout_minutes: float) -> Iterator[None]:
    """A collective that failed because another rank froze, died or lost its connection: one line, not a traceback.

    (NCCL's watchdog aborts a timed-out process itself; gloo raises, and this catches it.)
    """
    try:
        yield
    except RuntimeError as err:  # DistError, or DDP's backward re-raising gloo's error as a plain RuntimeError
        if not d.enabled or not (isinstance(err, dist.DistError) or any(m in str(err) for m in PEER_FAILURES)):
            raise
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise UserError(
            f"rank {d.rank}: another process of this torchrun job stopped answering ({detail}); no reply within "
            f"train.dist_timeout_minutes={timeout_minutes:g} ends the job: restart it with train.resume=true"
        ) from None


@contextmanager
def distributed_job(device: torch.device, timeout_minutes: float) -> Iterator[tuple[Dist, torch.device]]:
    """Join the torchrun job for the block (peers watched); leave it on the way out.

    After a clean finish every rank waits for the others before tearing the group down: a rank
    that left while rank 0 was still writing last.pt now and then aborted at exit ("terminate
    called without an active exception"). After an error nobody waits: a peer may be gone.
    """
    d, device = init_distributed(device, timeout_minutes)
    try:
        with peers_watched(d, timeout_minutes):
            yield d, device
            if d.enabled:
                dist.barrier(group=_setup_group)
    finally:
        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _broadcast(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_setup_group)
    return box[0]


def main_only(d: Dist, fn: Callable[[], T]) -> T:
    """fn() on rank 0 alone; its result, or its error, reaches every rank.

    Without this, an error on rank 0 (a held lock, a missing last.pt) would leave the other
    ranks waiting in their next collective until the process-group timeout.
    """
    if not d.enabled:
        return fn()
    if d.is_main:
        try:
            result = fn()
        except UserError as err:
            _broadcast(("error", str(err)))
            raise
        except BaseException as err:
            _broadcast(("error", f"rank 0 failed: {type(err).__name__}: {err}"))
            raise
        _broadcast(("ok", result))
        return result
    status, value = _broadcast(None)
    if status == "error":
        raise UserError(value)
    return value


def main_first(d: Dist, fn: Callable[[], T]) -> T:
    """fn() on rank 0, then on the others (rank 0 alone fills a cache that the others then read)."""
    if not d.enabled:
        return fn()
    held: list[T] = []
    main_only(d, lambda: held.append(fn()))
    return held[0] if d.is_main else fn()


def all_gather(d: Dist, obj: T) -> list[T]:
    """Every rank's `obj` (CPU tensors / plain data), in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks, in place (a no-op in a single process)."""
    if d.enabled:
        dist.all_reduce(tensor)
    return tensor
