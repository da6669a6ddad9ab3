"""
Flags and argparse types that several ``drive-vlm`` commands share.

The model-loading flags (LoadSpec), the pruning and decoding flags (RuntimeSettings) of run and
eval, ``--llm-weights``, and the argument types that turn a bad value into argparse's usage error.
"""

from __future__ import annotations

import argparse

from ..pruning import check_keep_ratio, check_pruner_name


def keep_ratio_type(text: str) -> float:
    """Parse a keep ratio in (0, 1]; argparse names the rule on a bad value."""
    try:
        return check_keep_ratio(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def pruner_type(text: str) -> str:
    """Parse a pruner name; argparse lists the known pruners on a typo."""
    try:
        return check_pruner_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def camera_size_type(text: str) -> tuple[int, int]:
    """Parse ``WxH`` (e.g. 1600x900) into ``(H, W)``."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: give WxH in pixels, e.g. 1600x900') from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f'{text!r}: width and height must be positive')
    return height, width


def positive_int(text: str) -> int:
    """Parse an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text}: must be >= 1')
    return value


def has_cuda() -> bool:
    """Return whether torch sees a CUDA GPU (the benchmarks' default device)."""
    import torch

    return torch.cuda.is_available()


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the pruning and decoding flags (RuntimeSettings) that run and eval share."""
    parser.add_argument('--keep-ratio', type=keep_ratio_type, default=0.25,
                        help='fraction of visual tokens KEPT (default 0.25, as the node)')
    parser.add_argument('--pruner', type=pruner_type, default='tfps',
                        help='pruner (default tfps)')
    parser.add_argument('--prune-layer', type=int, default=0,
                        help='0 or LLM layer K (default 0)')
    parser.add_argument('--max-new-tokens', type=int, default=96,
                        help='default 96, as the node')
    parser.add_argument('--reconpruner-weights', default='', metavar='W.safetensors',
                        help='ReconPruner weights for --pruner reconpruner (drive-vlm train '
                             'reconpruner); default: MODEL_DIR/reconpruner.safetensors, which '
                             'the shipped model has')
    parser.add_argument('--no-waypoint-grammar', dest='waypoint_grammar', action='store_false',
                        help='decode PLANNING answers freely; by default they are decoded under '
                             'the waypoint grammar, so every trajectory parses '
                             '(pipeline/waypoint_grammar.py)')


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model-loading flags (LoadSpec) that run, eval, search and the benchmarks share."""
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (default cpu)")
    parser.add_argument('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16',
                                                            'float16'])
    parser.add_argument('--attn', default='auto', choices=['auto', 'sdpa', 'eager',
                                                           'flash_attention_2'])
    parser.add_argument('--vision-backend', default='torch',
                        choices=['torch', 'compile', 'onnxruntime', 'tensorrt'],
                        help='vision encoder backend; unavailable ones fall back (default torch)')
    parser.add_argument('--vision-onnx', default='', help='ONNX file for onnxruntime')
    parser.add_argument('--vision-engine', default='', help='TensorRT engine file')
    add_llm_weights_argument(parser)


LLM_WEIGHTS_HELP = ("the LLM's linear weights: native, int8 or int4 (CUDA compute capability "
                    '8.0+ in bfloat16, or the CPU); torchao, models/llm_weights.py')


def add_llm_weights_argument(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """Add ``--llm-weights`` (one setting, or ``several`` for a benchmark's rows)."""
    choices = ['native', 'int8', 'int4']  # models.llm_weights.LLM_WEIGHTS, without torch
    if several:
        parser.add_argument('--llm-weights', nargs='+', choices=choices, default=['native'],
                            help=f'one row per setting (default native); {LLM_WEIGHTS_HELP}')
    else:
        parser.add_argument('--llm-weights', choices=choices, default='native',
                            help=f'default native; {LLM_WEIGHTS_HELP}')


def load_spec_from_args(args: argparse.Namespace, model: str):
    """Return the LoadSpec of the add_load_arguments flags for checkpoint ``model``."""
    from ..models.loading import LoadSpec

    return LoadSpec(model, device=args.device, dtype=args.dtype,
                    attn_implementation=args.attn, vision_backend=args.vision_backend,
                    vision_onnx=args.vision_onnx, vision_engine=args.vision_engine,
                    llm_weights=args.llm_weights)


def check_reconpruner_weights(pruner: str, weights: str, model: str) -> None:
    """Fail before the run when pruner reconpruner has no readable weights (named errors)."""
    from ..models.loading import resolve_checkpoint
    from ..pruning.reconpruner import load_scorer, resolve_weights

    if check_pruner_name(pruner) == 'reconpruner':
        load_scorer(resolve_weights(weights, resolve_checkpoint(model)))
