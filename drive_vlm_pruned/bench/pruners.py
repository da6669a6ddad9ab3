"""
``drive-vlm bench pruners``: selection time of every pruner on synthetic six-view tokens.

The foreground-recall diagnostic on real frames is eval/foreground_recall.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
import json
from pathlib import Path

import torch

from .timing import available_devices, device_label, time_call
from ..pruning import make_pruner, prune, Pruner, Stage
from ..pruning.reconpruner import ReconPruner, ReconScorer, ScorerConfig
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
                pruner = timing_pruner(name, dim, device, dtype)
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


def timing_pruner(name: str, dim: int, device: torch.device, dtype: torch.dtype):
    """Return the pruner to time; ReconPruner gets a random-weight scorer of width ``dim``."""
    if name != 'reconpruner':
        return make_pruner(name)
    # Selection time does not depend on the weight values, only on the layer's shape.
    scorer = ReconScorer(ScorerConfig(dim)).to(device=device, dtype=dtype).eval()
    return ReconPruner(scorer=scorer.requires_grad_(False))


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


@dataclass(frozen=True)
class PrunersBenchOptions:
    """What ``drive-vlm bench pruners`` runs; the CLI builds it from its flags."""

    pruners: tuple[str, ...] = ()  # (): every single-stage pruner
    dims: tuple[int, ...] = (1152, 3584)
    keep_ratios: tuple[float, ...] = (0.5, 0.25, 0.1)
    views: int = 6
    tokens: int = 729  # per view, a square number
    device: str = 'all'  # 'cpu', 'cuda', 'cuda:1' or 'all' (CPU plus CUDA if present)
    dtype: str = 'float32'  # token dtype
    similarity_dtype: str = 'auto'
    warmup: int = 2
    repeats: int = 10
    threads: int = 0  # torch CPU threads; 0: torch's default
    json_out: str | None = None
    markdown_out: str | None = None


def run_pruners_bench(options: PrunersBenchOptions) -> int:
    """Time every pruner's selection, print the table and write the files asked for."""
    torch.set_num_threads(options.threads or torch.get_num_threads())
    devices = available_devices() if options.device == 'all' else [torch.device(options.device)]
    pruners = list(options.pruners) or single_stage_pruners()
    print(f'Timing {len(pruners)} pruners on {options.views} views x {options.tokens} tokens '
          f'(synthetic), {options.repeats} repeats after {options.warmup} warm-up runs:')
    cells = bench_pruners(
        pruners, list(options.dims), list(options.keep_ratios), devices, options.views,
        options.tokens, options.warmup, options.repeats, getattr(torch, options.dtype),
        options.similarity_dtype,
    )
    print()
    print(markdown_table(cells))
    if options.json_out:
        write_json(cells, options.json_out)
        print(f'\nwrote {len(cells)} records to {options.json_out}')
    if options.markdown_out:
        Path(options.markdown_out).write_text(markdown_table(cells) + '\n')
    return 0
