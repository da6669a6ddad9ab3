"""
Data-parallel eval by key frame, on the launcher the user already has.

``torchrun --nproc_per_node N`` and ``accelerate launch --num_processes N`` start N copies of
the same command and give each ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. Rule: process r
answers the key frames r, r + N, r + 2N, ... of the pass (whole frames, so DriveLM's graph
gating and the per-frame camera set stay within one process), then every process receives
every answer with ``torch.distributed.all_gather_object`` over gloo (CPU objects; it runs on
CPU-only machines and beside NCCL on GPUs) and puts them back in the pass's order. Without a
launcher the world is one process and nothing is gathered.

On GPUs each process binds ``cuda:LOCAL_RANK`` before the model loads, so ``--device cuda``
means that process's own GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
import os
from typing import Any, TypeVar

T = TypeVar('T')
GATHER_TIMEOUT = timedelta(hours=2)  # a rank waits this long for the slowest one's pass


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel launch: rank ``rank`` of ``world``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Shard:
        """Read RANK, WORLD_SIZE and LOCAL_RANK (torchrun, accelerate); unset: one process."""
        env = os.environ if env is None else env
        try:
            shard = cls(int(env.get('RANK', 0)), int(env.get('WORLD_SIZE', 1)),
                        int(env.get('LOCAL_RANK', 0)))
        except ValueError as err:
            raise ValueError(f'RANK/WORLD_SIZE/LOCAL_RANK must be integers ({err}); unset them '
                             'for a single process, or start the command with torchrun') from None
        if not 0 <= shard.rank < shard.world:
            raise ValueError(f'RANK={shard.rank} is outside WORLD_SIZE={shard.world}: start the '
                             'command with torchrun or accelerate launch, or unset both')
        return shard

    @property
    def main(self) -> bool:
        """Say whether this is the process that writes the files and prints the report."""
        return self.rank == 0

    @property
    def suffix(self) -> str:
        """'' for one process, else ``.rank{r}of{N}`` (per-process logs and resumes)."""
        return '' if self.world == 1 else f'.rank{self.rank}of{self.world}'

    def owns(self, frame_index: int) -> bool:
        return frame_index % self.world == self.rank

    def take(self, pairs: Sequence[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        """Return the (frame, QA) pairs of the key frames this process answers (module doc)."""
        if self.world == 1:
            return list(pairs)
        index: dict[tuple, int] = {}
        for frame, _ in pairs:
            index.setdefault((frame.scene, frame.frame), len(index))
        return [(f, qa) for f, qa in pairs if self.owns(index[(f.scene, f.frame)])]

    def bind_device(self) -> None:
        """On a multi-process GPU launch, make ``cuda`` mean ``cuda:LOCAL_RANK``."""
        if self.world == 1:
            return
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())

    def gather(self, obj: T) -> list[T]:
        """Every process's ``obj``, in rank order (one process: ``[obj]``)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group('gloo', rank=self.rank, world_size=self.world,
                                    timeout=GATHER_TIMEOUT)
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Leave the process group (torchrun warns when a process exits without it)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Shard()
