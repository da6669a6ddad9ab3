"""``drive-vlm convert {drivemm,drivelmm-o1,impromptu-vla} SRC_DIR OUT_DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path
import sys

CONVERT_HELP = """\
Convert a published driving VLM into a checkpoint that transformers' own classes load
(no remote code): the output runs with drive-vlm run/node/bench --model OUT_DIR and with
AutoModelForImageTextToText.from_pretrained(OUT_DIR).

  drivemm        DriveMM (LLaVA-NeXT LlavaLlamaForCausalLM, SigLIP + Llama-3.1-8B)
                 -> LlavaOnevisionForConditionalGeneration
  drivelmm-o1    DriveLMM-o1 (InternVL2.5-8B remote code, InternViT + InternLM2.5-7B, LoRA
                 merged) -> InternVLForConditionalGeneration (Llama text backbone)
  impromptu-vla  Impromptu-VLA (already Qwen2.5-VL): weights linked unchanged, config.json
                 records its prompt format

Weights stream tensor by tensor (memory stays near one output shard), only .safetensors are
read (a .bin/.pt source gets instructions, it is never unpickled), every source tensor must map
and every target parameter must be filled, else nothing is written. The checkpoint's prompt
format (chat template, camera order, image size) is recorded in config.json and used by the
pipeline. OUT_DIR/README.md names the source and the SHA-256 of its config.json. An interrupted
run resumes when started again with the same arguments.

example: drive-vlm convert drivemm ckpt/DriveMM ckpt/DriveMM-hf --dtype bf16
"""


def add_convert_parser(subparsers) -> None:
    """Add ``convert``."""
    from ..convert.kinds import DTYPE_NAMES, KINDS

    parser = subparsers.add_parser(
        'convert', help='convert DriveMM / DriveLMM-o1 / Impromptu-VLA to HF-native checkpoints',
        description=CONVERT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('kind', choices=KINDS, help='which published model SRC_DIR holds')
    parser.add_argument('src_dir', metavar='SRC_DIR', help='the downloaded checkpoint directory')
    parser.add_argument('out_dir', metavar='OUT_DIR', help='new (or empty) output directory')
    parser.add_argument('--dtype', default='auto', choices=DTYPE_NAMES,
                        help='weight dtype of the output (default auto: as the source)')
    parser.add_argument('--max-shard-size', default='5GB',
                        help='largest output shard, e.g. 5GB, 500MB (default 5GB)')
    parser.add_argument('--vision-config', metavar='JSON', type=Path,
                        help="drivemm: the SigLIP tower's config.json when it is not "
                             'google/siglip-so400m-patch14-384')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    """Run ``drive-vlm convert``; return the exit status."""
    from ..convert.runner import convert_checkpoint, ConvertOptions
    from ..convert.safetensors_stream import ConversionError, parse_size

    try:
        options = ConvertOptions(dtype=args.dtype, max_shard_bytes=parse_size(args.max_shard_size),
                                 vision_config=args.vision_config,
                                 progress=not args.no_progress)
        report = convert_checkpoint(args.kind, args.src_dir, args.out_dir, options)
    except ConversionError as err:
        print(f'drive-vlm convert: {err}', file=sys.stderr)
        return 2
    print(f'wrote {report.out_dir}: {report.tensors} tensors in {report.shards} shard(s) '
          f'({report.tensors_written_now} written now); see {report.out_dir / "README.md"}')
    if report.peak_live_bytes:
        print(f'peak tensor memory {report.peak_live_bytes / 2**20:.1f} MiB (largest source '
              f'shard {report.largest_source_shard_bytes / 2**20:.1f} MiB)')
    return 0
