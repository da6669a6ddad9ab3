"""``drive-vlm bench pruners``: selection time of every pruner on synthetic six-view tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
import json
from pathlib import Path

import torch

from .timing import available_devices, device_label, time_call
from ..pruning import make_pruner, prune, Pruner, Stage
from ..pruning.registry import PRUNERS
from ..pruning.synthetic import synthetic_layer_state, synthetic_views


@dataclass(frozen=True)
class PrunerCell:
    """One benchmark cell: a pruner on V x N tokens of width D at one keep ratio and device."""

    pruner: str
    stage: str
    views: int
    tokens: int
    dim: int
    keep_ratio: float
    kept: int
    device: str
    dtype: str
    similarity: str  # Gram-matrix precision of the max-min pruners ('auto', 'float32', ...)
    median_ms: float
    spread_ms: float
    min_ms: float
    max_ms: float
    repeats: int


def single_stage_pruners() -> list[str]:
    """Registry names that are one selection step (the two-stage 'mvpruner' is timed per stage)."""
    return [n for n, cls in sorted(PRUNERS.items()) if isinstance(cls, type)
            and issubclass(cls, Pruner)]


def bench_pruners(
    pruners: Sequence[str],
    dims: Sequence[int],
    keep_ratios: Sequence[float],
    devices: Sequence[torch.device],
    views: int = 6,
    tokens: int = 729,
    warmup: int = 2,
    repeats: int = 10,
    dtype: torch.dtype = torch.float32,
    similarity: str = 'auto',
    progress=print,
) -> list[PrunerCell]:
    """
    Time ``prune`` for every (device, dim, pruner, keep ratio).

    In-LLM pruners include their scoring from a synthetic layer state (8-token prefix, 16-token
    instruction, 28 heads / 4 KV heads).
    """
    cells = []
    for device in devices:
        for dim in dims:
            scene = synthetic_views(views, tokens, dim, dtype=dtype, device=device)
            layer = synthetic_layer_state(scene.tokens, heads=28, kv_heads=4, head_dim=128)
            for name in pruners:
                pruner = make_pruner(name)
                if hasattr(pruner, 'similarity_dtype') and similarity != 'auto':
                    pruner.similarity_dtype = getattr(torch, similarity)
                in_llm = pruner.stage is Stage.IN_LLM
                for keep in keep_ratios:
                    state = layer if in_llm else None
                    kept = prune(pruner, scene.tokens, keep, layer=state, seed=0)

                    def run(p=pruner, k=keep, s=state, t=scene.tokens) -> None:
                        prune(p, t, k, layer=s, seed=0)

                    t = time_call(run, device, warmup, repeats)
                    cell = PrunerCell(
                        name, pruner.stage.value, views, tokens, dim, keep, kept.total(0),
                        device_label(device), str(dtype).replace('torch.', ''), similarity,
                        round(t.median_ms, 3), round(t.spread_ms, 3), round(t.min_ms, 3),
                        round(t.max_ms, 3), t.repeats,
                    )
                    progress(
                        f'  {cell.device:<22} D={dim:<5} {name:<12} keep={keep:<5} '
                        f'{cell.median_ms:9.2f} ms'
                    )
                    cells.append(cell)
    return cells


def markdown_table(cells: Sequence[PrunerCell]) -> str:
    """One row per cell: pruner, device, D, keep ratio, kept tokens, median and IQR in ms."""
    lines = [
        '| pruner | stage | device | tokens | D | keep | kept | median ms | IQR ms |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for c in cells:
        lines.append(
            f'| {c.pruner} | {c.stage} | {c.device} | {c.views}x{c.tokens} | {c.dim} | '
            f'{c.keep_ratio} | {c.kept} | {c.median_ms:.2f} | {c.spread_ms:.2f} |'
        )
    return '\n'.join(lines)


def write_json(cells: Sequence[PrunerCell], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps([asdict(c) for c in cells], indent=1) + '\n')


def main(args) -> int:
    """Entry point of ``drive-vlm bench pruners`` (arguments from ``cli.main``)."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    devices = available_devices() if args.device == 'all' else [torch.device(args.device)]
    pruners = args.pruners or single_stage_pruners()
    print(f'Timing {len(pruners)} pruners on {args.views} views x {args.tokens} tokens '
          f'(synthetic), {args.repeats} repeats after {args.warmup} warm-up runs:')
    cells = bench_pruners(
        pruners, args.dims, args.keep_ratios, devices, args.views, args.tokens,
        args.warmup, args.repeats, getattr(torch, args.dtype), args.similarity_dtype,
    )
    print()
    print(markdown_table(cells))
    if args.json_out:
        write_json(cells, args.json_out)
        print(f'\nwrote {len(cells)} records to {args.json_out}')
    if args.markdown_out:
        Path(args.markdown_out).write_text(markdown_table(cells) + '\n')
    return 0
