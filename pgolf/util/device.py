"""Where a process runs: its place in a ``torchrun`` job, its device, and the collectives the
training loop needs to keep every rank on the same branch."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Process placement, read once from torchrun's variables by the entry point."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "DistEnv":
        """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` when torchrun set them, else one process; a value
        that is not a whole number, or a rank outside the world, raises ``ValueError`` naming the variable."""
        if "RANK" not in environ or "WORLD_SIZE" not in environ:
            return cls()
        world_size = _env_int(environ, "WORLD_SIZE", 1)
        return cls(_env_int(environ, "RANK", 0, world_size - 1), world_size, _env_int(environ, "LOCAL_RANK", 0))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def _env_int(environ: Mapping[str, str], name: str, low: int, high: int | None = None) -> int:
    """The environment variable ``name`` (0 when unset) as a whole number in ``low..high``."""
    text = environ.get(name, "0")
    value: int | None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"environment variable {name}={text!r} must be a whole number {allowed} (torchrun sets "
                         "RANK, WORLD_SIZE and LOCAL_RANK; unset them to run one process)")
    return value


class DeviceError(ValueError):
    """The requested device does not exist on this machine."""


def pick_device(requested: str, env: DistEnv) -> torch.device:
    """``requested`` as a device, or for ``"auto"`` this rank's GPU when CUDA is there, else the CPU.
    A CUDA device this machine does not have raises :class:`DeviceError`."""
    if requested != "auto":
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise DeviceError(f"train.device={requested!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if (device.index or 0) >= count:
                raise DeviceError(f"train.device={requested} but this machine has {count} CUDA device(s); "
                                  "use train.device=auto or cpu")
        return device
    return torch.device("cuda", env.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (as the official script), nothing on CPU (fp32, exact tests)."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timing boundaries); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def all_reduce_mean(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """``x`` averaged over ranks, in place (unchanged in one process)."""
    if env.distributed:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= env.world_size
    return x


def any_rank(flags: tuple[bool, ...], env: DistEnv, device: torch.device) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks, in one collective, so every rank takes the same branch."""
    if not env.distributed:
        return flags
    t = torch.tensor([int(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())
