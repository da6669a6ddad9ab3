"""``drive-vlm bench probes``: linear probes at each depth of a VLM (eval/depth_probes.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys

from .flags import add_load_arguments, load_spec_from_args

PROBES_HELP = """\
Where does a model lose what its cameras show? For every exists and count question, read the
vision tower's output, the projector's output and each LLM layer's residual stream at the answer
position (keep 1.0), fit one linear probe per class on the --fit-split frames and score it on
the --split frames, beside the class majority and the question prior (the majority answer of
the same class and camera). A LLaVA-style model only (the embedded model, LLaVA-OneVision).

A second table says whether each depth can tell which view a visual token comes from (a linear
probe of the view id over the visual tokens of the first 20 frames of each split; chance 1/6):
a question about one camera can only be answered from that camera's tokens once they carry it.

A third table gives, per LLM layer, the attention mass that the end of the planning question
puts on the six views (the same 20 frames of --split): a planning answer copies the ego
history from the question text, and a layer that looks mostly at the views reads little of it.

example: drive-vlm bench probes --data data/drive --fit-frames 300
"""


VIEW_ID_FRAMES = 20  # frames per split for the view-identity probe (x 6 views x 28 tokens)


def add_probes_parser(bench_sub) -> argparse.ArgumentParser:
    """Add ``bench probes``."""
    p = bench_sub.add_parser('probes', help='linear probes of presence and count at each depth',
                             description=PROBES_HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='', help="checkpoint (default '': the embedded model)")
    p.add_argument('--data', required=True, metavar='DIR',
                   help='DriveLM-format data directory (<split>.json)')
    p.add_argument('--fit-split', default='train', help='split the probes are fit on (train)')
    p.add_argument('--split', default='val', help='held-out split they are scored on (val)')
    p.add_argument('--fit-frames', type=int, default=300,
                   help='key frames of --fit-split (default 300)')
    p.add_argument('--frames', type=int, help='key frames of --split (default: all)')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    p.add_argument('--json-out', metavar='PATH', help='write the rows as JSON here')
    add_load_arguments(p)
    p.set_defaults(run=run_probes)
    return p


def run_probes(args: argparse.Namespace) -> int:
    """Run ``drive-vlm bench probes``; return the exit status."""
    from dataclasses import asdict

    import torch
    from tqdm import tqdm

    from ..data.drivelm import DriveLMError, load_drivelm
    from ..eval.depth_probes import (
        collect_features,
        format_table,
        planning_view_attention,
        probe_table,
        view_identity_features,
        view_identity_table,
    )
    from ..models.adapters import load_adapter
    from ..pipeline.pipeline import Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        fit_frames = load_drivelm(args.data, split=args.fit_split)[:args.fit_frames]
        held_frames = load_drivelm(args.data, split=args.split)[:args.frames]
    except (DriveLMError, FileNotFoundError) as err:
        print(f'drive-vlm bench probes: {err}', file=sys.stderr)
        return 2
    pipeline = Pipeline(load_adapter(load_spec_from_args(args, args.model),
                                     log=lambda s: print(s, file=sys.stderr)))
    features = []
    for name, frames in (('fit', fit_frames), ('held out', held_frames)):
        with tqdm(total=len(frames), desc=f'probes: {name}', unit='frame') as bar:
            try:
                features.append(collect_features(pipeline, frames, bar.update))
            except ValueError as err:
                print(f'drive-vlm bench probes: {err}', file=sys.stderr)
                return 2
    rows = probe_table(*features)
    if not rows:
        print('drive-vlm bench probes: no exists or count questions in the data (the probes '
              'read `drive-vlm data synth` question families)', file=sys.stderr)
        return 2
    print(format_table(rows))
    adapter = pipeline.adapter
    try:
        views = view_identity_table(
            view_identity_features(adapter, fit_frames[:VIEW_ID_FRAMES]),
            view_identity_features(adapter, held_frames[:VIEW_ID_FRAMES]))
    except ValueError as err:  # DriveLMError: an image that cannot be read
        print(f'drive-vlm bench probes: {err}', file=sys.stderr)
        return 2
    print('\n| depth (visual tokens) | view id probe |\n| --- | --- |')
    print('\n'.join(f'| {depth} | {100 * acc:.1f}% |' for depth, acc in views.items()))
    print('| (chance) | 16.7% |')
    try:
        attention = planning_view_attention(adapter, held_frames[:VIEW_ID_FRAMES])
    except ValueError as err:
        print(f'drive-vlm bench probes: {err}', file=sys.stderr)
        return 2
    if attention:
        print('\n| LLM layer | attention of the planning question on the views (mean) '
              '| per query head |\n| --- | --- | --- |')
        for depth, heads in attention.items():
            print(f'| {depth} | {100 * sum(heads) / len(heads):.0f}% | '
                  + ' '.join(f'{100 * h:.0f}' for h in heads) + ' |')
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([asdict(r) for r in rows], indent=1) + '\n')
    return 0
