"""``drive-vlm make-tiny-model``: a tiny random-weight checkpoint of a VLM family."""

from __future__ import annotations

import argparse


def add_make_tiny_model_parser(sub) -> None:
    """Add ``make-tiny-model``."""
    from ..models.tiny import FAMILIES

    tiny = sub.add_parser(
        'make-tiny-model', help='write a tiny random-weight checkpoint of a VLM family',
        description='Write a real Hugging Face checkpoint directory (config.json, '
                    'model.safetensors, tokenizer, image-processor config) built with the '
                    "family's own transformers classes and random weights. It loads exactly like "
                    'a real checkpoint; tests and the demo use it. It answers nonsense.',
    )
    tiny.add_argument('--family', required=True, choices=FAMILIES, help='model family')
    tiny.add_argument('out_dir', metavar='OUT_DIR', help='new (or empty) directory to write')
    tiny.add_argument('--seed', type=int, default=0, help='weight seed (default 0)')
    tiny.set_defaults(run=run_make_tiny_model)


def run_make_tiny_model(args: argparse.Namespace) -> int:
    """Write the checkpoint and print its directory."""
    from ..models.tiny import make_tiny_model

    print(make_tiny_model(args.family, args.out_dir, args.seed))
    return 0
