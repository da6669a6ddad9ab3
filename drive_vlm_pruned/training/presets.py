"""
Model sizes and training recipes, by preset name (``drive-vlm train vlm --preset NAME``).

The embedded model is a LLaVA-OneVision (SigLIP tower + projector + Qwen2 LM) small enough to
train on a 2-core CPU, with 224 px views at patch 16, so every view gives 14 x 14 = 196 prunable
tokens (the model card, checkpoints/drive-vlm-nano/README.md). Its recipe is three stages: the
vision stage (``drive-vlm train vision``, vision_stage.py), then ``nano-text``, then ``nano``.
``test`` is a toy size for fast tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class ModelPreset:
    """Shape of the LLaVA-OneVision built from scratch (vision tower, projector, Qwen2 LM)."""

    image_size: int = 224
    patch_size: int = 16
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 512
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 6
    text_kv_heads: int = 2
    text_mlp: int = 768
    max_positions: int = 4096
    vocab_size: int = 2048  # upper bound: BPE stops earlier when the corpus has no more merges
    # the six-view preamble it is trained on (models/prompts.py; recorded in config.json)
    prompt_format: str = 'default'

    @property
    def tokens_per_view(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class Recipe:
    """Optimisation schedule: AdamW, linear warm-up then cosine decay to ``min_lr_ratio``."""

    steps: int = 2000
    frames_per_step: int = 1  # key frames per step AND process (all their QA turns packed)
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    eval_every: int = 200  # steps between validation passes
    eval_frames: int = 32  # fixed validation subset (key frames, all their QA)
    save_every: int = 100  # steps between resumable checkpoints
    seed: int = 0
    # scale the projector so visual tokens match the text scale at the start (visual_scale.py)
    match_visual_scale: bool = False
    # keep visual tokens below this multiple of the text norm after LLM layer 1 (0: off)
    visual_norm_ratio: float = 0.0
    # a question naming a camera attends to it: loss weight (0: off), (LLM layer, query head)
    route_loss: float = 0.0
    route_at: tuple[int, int] = (2, 0)
    # a question naming a class and a camera attends to that class's tokens in that camera:
    # loss weight (0: off; needs the label masks), (LLM layer, query head)
    object_loss: float = 0.0
    object_at: tuple[int, int] = (2, 1)
    # count-aware object routing: the head leaves the first prefix token 1 / (n + 1) of its
    # mass for n objects that count, so its output carries n (samples.object_targets)
    object_count: bool = False
    # extra exists / count turns per train frame, drawn from its gt.view_counts (data format 3;
    # data/frame_qa.drill_qa): the frame's 5 camera questions cover 5 of its 24 camera x class
    # pairs, the drills ask more of them. Train split only; val and test keep their own QA.
    drill_exists: int = 0
    drill_count: int = 0
    # extra planning turns per train frame on other train-split ego motions
    # (data/plan_drill.py): a frame holds one planning question, and the waypoints are
    # arithmetic on the ego history that the LLM learns from examples
    drill_plan: int = 0
    # behavior-choice drill turns per train frame on other train ego motions, each with its own
    # options (data/plan_drill.py): the letter lookup is learned from examples, a frame holds one
    drill_mc: int = 0
    # (family, weight) pairs: that family's turns weigh this many turns in the answer loss
    # (samples.pack_text); the others weigh 1
    family_weights: tuple[tuple[str, float], ...] = ()
    # the language stage: the LLM learns the QA turns without the views (no tower, no
    # projector, no visual tokens), as a real VLM's LLM is pretrained on text before any image
    text_only: bool = False

    def view_settings(self) -> list[str]:
        """Return the settings that are on and need the views (a text-only stage refuses them)."""
        named = {'--route-loss': self.route_loss, '--object-loss': self.object_loss,
                 '--drill-exists': self.drill_exists,
                 '--drill-count': self.drill_count, 'visual norm cap': self.visual_norm_ratio,
                 'visual scale match': self.match_visual_scale}
        return [name for name, value in named.items() if value]


@dataclass(frozen=True)
class Preset:
    name: str
    model: ModelPreset
    recipe: Recipe
    needs_init: bool = False  # a second stage: starts from a trained checkpoint (--init-from)

    def as_dict(self) -> dict:
        return {'name': self.name, 'model': asdict(self.model), 'recipe': asdict(self.recipe)}


PRESETS = {
    # The embedded model's recipe (issue 28; the model card), after `drive-vlm data synth` and
    # `drive-vlm train vision`: first the language stage, where the LLM learns the questions and
    # the ego-history arithmetic of planning from text alone, as a real VLM's LLM is pretrained
    # on text before any image ...
    'nano-text': Preset('nano-text', ModelPreset(prompt_format='named-views'),
                        Recipe(steps=2000, frames_per_step=2, eval_every=400, text_only=True)),
    # ... then the VLM stage from it (--init-from TEXT/final), on the vision stage's tower,
    # frozen (--vision-init VISION/vision_tower --freeze-vision): the projector and the LLM
    # learn the QA with view and object routing, 12 exists + 8 count drill turns a frame, and
    # 2 planning drill turns a frame on other train-split ego motions.
    'nano': Preset('nano', ModelPreset(prompt_format='named-views'),
                   Recipe(steps=2000, lr=1e-3, eval_every=400, match_visual_scale=True,
                          visual_norm_ratio=2.0, route_loss=1.0, object_loss=1.0,
                          drill_exists=12, drill_count=8, drill_plan=2), needs_init=True),
    'test': Preset(
        'test',
        ModelPreset(image_size=64, patch_size=16, vision_hidden=32, vision_layers=1,
                    vision_heads=2, vision_mlp=64, text_hidden=64, text_layers=2, text_heads=4,
                    text_kv_heads=2, text_mlp=128, vocab_size=600),
        Recipe(steps=2, frames_per_step=2, lr=3e-3, warmup_steps=0, eval_every=2,
               eval_frames=2, save_every=2),
    ),
}


def get_preset(name: str, **recipe_overrides) -> Preset:
    """Return preset ``name`` with recipe fields replaced (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f'unknown preset {name!r}; presets: {", ".join(sorted(PRESETS))}')
    preset = PRESETS[name]
    overrides = {k: v for k, v in recipe_overrides.items() if v is not None}
    return replace(preset, recipe=replace(preset.recipe, **overrides))
