"""
What a CPU offers bfloat16 training: AMX tiles, AVX-512 BF16, or neither.

torch's CPU autocast runs bf16 matmuls through oneDNN, which is fast with AMX (Sapphire Rapids
and later) and AVX-512 BF16 (Cooper Lake, Zen 4), and emulated, so slower than fp32, without
them. Runs record which one they had, so a bf16-vs-fp32 figure names its machine.

Measured on a 2-core AMD EPYC with neither (2026-12-07, the vision stage at batch 32): fp32
0.51 s/step, bf16 autocast 8.2 s/step, 16x slower. So ``auto`` precision follows the CPU: bf16
where it has AMX or AVX-512 BF16 (0.81-0.84x fp32's time a step on AVX-512 BF16), fp32 where
it has neither, and an explicit bf16 on such a CPU is run but warned about.
"""

from __future__ import annotations

from pathlib import Path


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
    # Unknown flags (no /proc/cpuinfo) count as none: torch's own bf16 check also says yes on
    # AVX-512 CPUs where oneDNN only emulates bf16, and fp32 is the safe choice there.
    return 'none'


def cpu_precision(requested: str, flags: set[str] | None = None) -> str:
    """
    Resolve a training precision for the CPU: 'bf16' or 'no' (fp32).

    ``requested`` is 'auto', 'no' or 'bf16'; 'auto' is bf16 where the CPU multiplies bf16
    natively (``bf16_support`` is not 'none') and fp32 where it would emulate it.
    """
    if requested not in ('auto', 'no', 'bf16'):
        raise ValueError(f'precision {requested!r} is not one of auto, no (fp32), bf16')
    if requested != 'auto':
        return requested
    return 'no' if bf16_support(flags) == 'none' else 'bf16'


def emulated_bf16_warning(precision: str, flags: set[str] | None = None) -> str | None:
    """Return a warning when ``precision`` is bf16 on a CPU that emulates it, else None."""
    if precision != 'bf16' or bf16_support(flags) != 'none':
        return None
    return ('bf16 autocast on this CPU is emulated (no AMX, no AVX-512 BF16): ~16x slower a step '
            'than fp32 where measured (training/cpu_info.py); --precision auto runs fp32 here')
