"""Which bf16 path a CPU has (training/cpu_info.py)."""

from drive_vlm_pruned.training.cpu_info import bf16_support, cpu_flags


def test_amx_wins_over_avx512_bf16_and_plain_cpus_have_none():
    assert bf16_support({'avx512f', 'avx512_bf16', 'amx_tile', 'amx_bf16'}) == 'amx'
    assert bf16_support({'avx2', 'avx512f', 'avx512_bf16'}) == 'avx512_bf16'
    assert bf16_support({'sse4_2', 'avx2'}) == 'none'


def test_flags_are_read_from_the_first_cpu_of_a_cpuinfo_file(tmp_path):
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\n'
                    'flags\t\t: fpu\n')
    assert cpu_flags(info) == {'fpu', 'avx2', 'amx_bf16'}
    assert cpu_flags(tmp_path / 'absent') == set()
