"""
Question prior and small-object share of exists/count under visibility rules (issue 28, item 4).

Usage: ``python scripts/measure_qa_rules.py SCENES``. Renders SCENES train scenes once, then
asks their questions under format 2's thresholds (60/24 px, uniform count values, small weight
3) and format 3's candidates, setting the qa_rules constants in turn (the last row is format
3). The format-2 count figures of docs/qa_rules.md come from this script at commit 18d67eb,
before count pairs were weighted by size; the first row here weights them too.
"""
from collections import Counter
import sys
import time

from drive_vlm_pruned.data import qa_rules, synth
from drive_vlm_pruned.scenes import make_scene, nuscenes_rig, render_frame_set
import numpy as np

opts = synth.DataOptions(scenes=int(sys.argv[1]), frames_per_scene=10, split='train')
rig = nuscenes_rig(448, 252)
frames_cache = []
t = time.time()
for seed in synth.scene_seeds(opts):
    scene = make_scene(synth.scene_config(seed, 10))
    for k, tt in enumerate(synth.key_frame_times(10)):
        views = render_frame_set(scene, rig, k, synth.capture_times(tt))
        frames_cache.append((seed, k, scene, views))
print(f'rendered {len(frames_cache)} frames in {time.time() - t:.0f}s', flush=True)
for mn, mg, cp, sw in [(60, 24, 0, 3), (144, 58, 0, 3), (144, 58, 1, 3), (144, 58, 1.5, 5)]:
    qa_rules.MIN_VISIBLE_PX_REF, qa_rules.MARGINAL_PX_REF = mn, mg
    qa_rules.COUNT_VALUE_POWER, qa_rules.SMALL_WEIGHT = cp, sw
    items = []
    for seed, k, scene, frames in frames_cache:
        facts = qa_rules.frame_facts(scene, frames)
        qa = qa_rules.frame_qa(facts, np.random.default_rng([seed, 3, k]))
        for cat in qa.qa.values():
            items += [q for q in cat if q['type'] in ('exists', 'count')]
    out = [f'min {mn} marg {mg} cp {cp} sw {sw}:']
    for fam in ('exists', 'count'):
        f = [q for q in items if q['type'] == fam]
        by = {}
        for q in f:
            by.setdefault(q['Q'], Counter())[q['A']] += 1
        prior = sum(c.most_common(1)[0][1] for c in by.values()) / len(f)
        small = sum(q['small'] for q in f) / len(f)
        ans = Counter(q['A'] for q in f).most_common(4)
        out.append(f'{fam} n={len(f)} prior={prior:.3f} small={small:.2f} {ans}')
    print(' | '.join(out), flush=True)
