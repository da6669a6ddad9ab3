"""
What a CPU offers bfloat16 training: AMX tiles, AVX-512 BF16, or neither.

torch's CPU autocast runs bf16 matmuls through oneDNN, which is fast with AMX (Sapphire Rapids
and later) and AVX-512 BF16 (Cooper Lake, Zen 4), and emulated, so slower than fp32, without
them. Runs record which one they had, so a bf16-vs-fp32 figure names its machine.
"""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_flags(cpuinfo: Path = Path('/proc/cpuinfo')) -> set[str]:
    """Return the feature flags of the first CPU (empty where /proc/cpuinfo is absent)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith('flags'):
            return set(line.split(':', 1)[1].split())
    return set()


def bf16_support(flags: set[str] | None = None) -> str:
    """Return 'amx', 'avx512_bf16' or 'none': the fastest bf16 matmul path this CPU has."""
    flags = cpu_flags() if flags is None else flags
    if 'amx_bf16' in flags:
        return 'amx'
    if 'avx512_bf16' in flags:
        return 'avx512_bf16'
    if flags or not torch.backends.mkldnn.is_available():
        return 'none'
    return 'avx512_bf16' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'none'
