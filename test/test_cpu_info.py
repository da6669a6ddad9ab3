"""Which bf16 path a CPU has (training/cpu_info.py)."""

from drive_vlm_pruned.training.cpu_info import bf16_support, cpu_flags
import pytest


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


def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_it_natively():
    from drive_vlm_pruned.training.cpu_info import cpu_precision, emulated_bf16_warning

    amx, avx512, plain = {'amx_bf16', 'avx512_bf16'}, {'avx512_bf16'}, {'avx2'}
    assert [cpu_precision('auto', f) for f in (amx, avx512, plain)] == ['bf16', 'bf16', 'no']
    assert cpu_precision('bf16', plain) == 'bf16' and cpu_precision('no', amx) == 'no'
    assert emulated_bf16_warning('bf16', amx) is None
    assert emulated_bf16_warning('no', plain) is None
    assert 'emulated' in emulated_bf16_warning('bf16', plain)
    assert '--precision auto' in emulated_bf16_warning('bf16', plain)
    with pytest.raises(ValueError, match='auto, no'):
        cpu_precision('fp16', amx)


def test_train_vision_takes_auto_precision_by_default_and_bf16_as_an_alias():
    import argparse

    from drive_vlm_pruned.cli.train_vision import add_vision_parser

    jobs = argparse.ArgumentParser().add_subparsers()
    parser = add_vision_parser(jobs)
    base = ['--data', 'D', '--out', 'O']
    assert parser.parse_args(base).precision == 'auto'
    assert parser.parse_args(base + ['--bf16']).precision == 'bf16'
    assert parser.parse_args(base + ['--precision', 'no']).precision == 'no'
