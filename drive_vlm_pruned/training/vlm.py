"""
``drive-vlm train vlm``: train the six-view LLaVA-OneVision from scratch on DriveLM-format data.

One loop on ``accelerate``: the same code runs on a CPU, one GPU, or several GPUs under
``accelerate launch`` / ``torchrun`` (DDP; each process takes its share of the frames of a step),
in bf16 autocast where the GPU or CPU has it natively (``--precision auto``: a GPU with bf16, a
CPU with AMX or AVX-512 BF16; training/cpu_info.py). Each optimizer step trains on
``frames_per_step`` key frames per process, all QA turns of a frame packed after its six views
(training/samples.py). The run directory holds:

- ``tokenizer/``: the BPE tokenizer trained on the train split (training/tokenizer.py);
- ``cache/``: the pre-rendered views (training/dataset.py);
- ``checkpoints/step-N/``: resumable state (model, AdamW, LR schedule, step, RNG) every
  ``save_every`` steps and at the end; ``--resume`` continues from the newest;
- ``history.json`` and ``curves.png``: training loss, validation loss and teacher-forced exact
  match (overall and per question family) on a fixed validation subset;
- ``final/``: the trained checkpoint (float16 safetensors), loadable by ``load_adapter``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
import json
from pathlib import Path
import shutil
import time

import numpy as np
import torch
from tqdm import tqdm

from .cpu_info import cpu_precision, emulated_bf16_warning
from .curves import plot_curves
from .dataset import load_frames, prepare_split, qa_texts, SplitData
from .loop import optimizer_step, step_rows, warmup_cosine
from .model import build_vlm, load_vision_tower, save_checkpoint
from .presets import get_preset, Preset, Recipe
from .samples import pack_text, PackedVLM, turn_exact
from .tokenizer import check_round_trip, train_tokenizer
from .val_planning import language_planning_check, planning_check, PlanningCheck
from .visual_scale import rescale_projector
from ..cameras import NUSCENES_CAMERAS
from ..models.llava_onevision import LlavaOnevisionAdapter

STORAGE = {'float16': torch.float16, 'bfloat16': torch.bfloat16, 'float32': torch.float32}


@dataclass(frozen=True)
class VLMTrainConfig:
    """Everything ``drive-vlm train vlm`` takes; None recipe fields keep the preset's value."""

    data: Path
    out: Path
    preset: str = 'nano-text'
    resume: bool = False
    steps: int | None = None
    frames_per_step: int | None = None
    lr: float | None = None
    eval_every: int | None = None
    eval_frames: int | None = None
    save_every: int | None = None
    seed: int | None = None
    max_minutes: float | None = None  # stop (and save) once this much training time has passed
    # stop (and save) after this global step; the LR schedule still spans the recipe's steps, so
    # --resume continues the same run (reruns check their first N steps against a full run's log)
    stop_at: int | None = None
    precision: str = 'auto'  # auto: bf16 where the device has it natively, else fp32 | no | bf16
    cpu: bool = False  # train on the CPU even where a GPU exists
    storage: str = 'float16'  # dtype of final/model.safetensors
    train_limit: int | None = None  # train on the first N frames only (tests)
    threads: int = 0  # torch CPU threads (0: torch's default); 1 is fastest on busy cores
    # start from this trained checkpoint (its weights and tokenizer) instead of from scratch
    init_from: Path | None = None
    route_loss: float | None = None  # weight of the view-routing loss (view_routing.py)
    object_loss: float | None = None  # weight of the object-routing loss (view_routing.py)
    object_count: bool | None = None  # count-aware object routing (Recipe.object_count)
    vision_init: Path | None = None  # a vision-stage tower (vision_stage.py) to start from
    freeze_vision: bool = False  # keep the tower fixed: train the projector and the LLM
    drill_exists: int | None = None  # extra exists turns per train frame (Recipe.drill_exists)
    drill_count: int | None = None  # extra count turns per train frame (Recipe.drill_count)
    drill_plan: int | None = None  # extra planning turns per train frame (Recipe.drill_plan)
    drill_mc: int | None = None  # extra behavior-choice turns per train frame (Recipe.drill_mc)
    family_weights: tuple[tuple[str, float], ...] | None = None  # Recipe.family_weights

    def preset_values(self) -> Preset:
        return get_preset(self.preset, steps=self.steps, frames_per_step=self.frames_per_step,
                          lr=self.lr, eval_every=self.eval_every, eval_frames=self.eval_frames,
                          save_every=self.save_every, seed=self.seed,
                          route_loss=self.route_loss, object_loss=self.object_loss,
                          object_count=self.object_count,
                          drill_exists=self.drill_exists, drill_count=self.drill_count,
                          drill_plan=self.drill_plan, drill_mc=self.drill_mc,
                          family_weights=self.family_weights)


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total
    stopped_by_time: bool
    stopped_at_step: bool  # --stop-at ended it before the recipe's last step
    final_dir: Path | None
    history: dict
    seconds: float


class TrainState:
    """The step counter, saved and restored with the accelerate state."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {'step': self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state['step'])


def train_vlm(config: VLMTrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Run (or resume) a training run; return where it stopped."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    preset = config.preset_values()
    recipe = preset.recipe
    if preset.needs_init and config.init_from is None:
        raise ValueError(f'preset {preset.name} is a second stage: pass --init-from TEXT/final, '
                         'the checkpoint of the language stage (--preset nano-text) to start '
                         'from')
    _check_language_stage(recipe, config)
    out = Path(config.out)
    checkpoints = out / 'checkpoints'
    latest = _latest_checkpoint(checkpoints)
    if config.resume and latest is None:
        raise ValueError(f'--resume: {checkpoints} holds no step-N checkpoint; run without '
                         '--resume to start')
    if not config.resume and latest is not None:
        raise ValueError(f'{out} already holds checkpoints ({latest.name}): pass --resume to '
                         'continue that run, or a new --out')
    # a language stage from --init-from renders nothing and trains no tokenizer: nothing else
    # would create the run directory before run.json is written there
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    # accelerate runs several CPU processes (torchrun, gloo) only when told cpu=True.
    cpu = config.cpu or not torch.cuda.is_available()
    # SigLIP's post-layernorm is unused (LLaVA reads the last hidden state before it).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    precision = _precision(config, cpu)
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, kwargs_handlers=[ddp])
    main = accelerator.is_main_process
    say = log if main else (lambda _msg: None)
    if cpu and (warning := emulated_bf16_warning(precision)):
        say(f'warning: {warning}')
    set_seed(recipe.seed)
    data = Path(config.data)
    train_frames = load_frames(data, 'train')[:config.train_limit]
    torch.manual_seed(recipe.seed)
    if config.init_from is not None:
        model, tokenizer, processor = _trained(config.init_from, accelerator.device)
        say(f'starting from the trained checkpoint {config.init_from}')
    else:
        tokenizer = _tokenizer(accelerator, out / 'tokenizer', train_frames, preset,
                               config.resume)
        model, processor = build_vlm(preset.model, tokenizer)
    if config.vision_init is not None and not config.resume:
        load_vision_tower(model, config.vision_init)
        say(f'vision tower from the vision stage {config.vision_init}')
    model.train()
    if config.freeze_vision:
        model.model.vision_tower.requires_grad_(False)
        say('vision tower frozen: training the projector and the LLM')
    adapter = LlavaOnevisionAdapter(model, tokenizer, processor, accelerator.device,
                                    torch.float32)
    labels = recipe.object_loss > 0  # object routing reads the label masks
    with accelerator.main_process_first():
        train = prepare_split(adapter, data, 'train', out / 'cache', train_frames, say, labels,
                              drills=(recipe.drill_exists, recipe.drill_count,
                                      recipe.drill_plan, recipe.drill_mc),
                              seed=recipe.seed, with_views=not recipe.text_only)
        val = prepare_split(adapter, data, 'val', out / 'cache', log=say, with_labels=labels,
                            with_views=not recipe.text_only)
    say(f'train: {len(train)} frames, {sum(len(t.turns) for t in train.turns)} QA; '
        f'val: {len(val)} frames; model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M '
        f'params, vocab {len(tokenizer)}, {preset.model.tokens_per_view} tokens per view; '
        f'{accelerator.num_processes} process(es) on {accelerator.device}, precision '
        f'{accelerator.mixed_precision}')
    _check_family_weights(recipe, train)
    if len(train) < recipe.frames_per_step * accelerator.num_processes:
        raise ValueError(f'{len(train)} train frames cannot fill a step of '
                         f'{recipe.frames_per_step} frames x {accelerator.num_processes} '
                         'processes: write more frames or lower --frames-per-step')
    depth = model.config.text_config.num_hidden_layers
    if recipe.route_loss and not 0 <= recipe.route_at[0] < depth:
        raise ValueError(f'route layer {recipe.route_at[0]} is not a layer of this {depth}-layer '
                         'LLM')
    if recipe.object_loss and not 0 <= recipe.object_at[0] < depth:
        raise ValueError(f'object-routing layer {recipe.object_at[0]} is not a layer of this '
                         f'{depth}-layer LLM')
    if recipe.route_loss:
        say(f'view routing: LLM layer {recipe.route_at[0]}, query head {recipe.route_at[1]}, '
            f'loss weight {recipe.route_loss}')
    if recipe.object_loss:
        say(f'object routing: LLM layer {recipe.object_at[0]}, query head '
            f'{recipe.object_at[1]}, loss weight {recipe.object_loss}'
            + (', count-aware (sink share 1 / (n + 1))' if recipe.object_count else ''))
    net = PackedVLM(adapter, NUSCENES_CAMERAS, recipe.visual_norm_ratio, recipe.route_loss,
                    recipe.route_at, recipe.object_loss, recipe.object_at, recipe.object_count,
                    recipe.text_only)
    if recipe.match_visual_scale and not config.resume:
        _match_visual_scale(net, train, say)
    optimizer = torch.optim.AdamW(_param_groups(net, recipe.weight_decay), lr=recipe.lr,
                                  betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(recipe.steps, recipe.warmup_steps, recipe.min_lr_ratio))
    state = TrainState()
    net, optimizer = accelerator.prepare(net, optimizer)
    accelerator.register_for_checkpointing(scheduler, state)
    history = {'train': [], 'val': []}
    if config.resume:
        accelerator.load_state(str(latest))
        history = _history_until(out / 'history.json', state.step)
        say(f'resumed {latest} at step {state.step}')
    if main:
        _write_run_info(out, config, preset, data, accelerator.num_processes)
    eval_index = _eval_subset(len(val), recipe.eval_frames, recipe.seed)
    result = _loop(accelerator, net, optimizer, scheduler, state, train, val, eval_index,
                   history, preset, config, out, say)
    if main:
        final = out / 'final'
        if final.exists():
            shutil.rmtree(final)
        save_checkpoint(accelerator.unwrap_model(net).model, tokenizer, processor, final,
                        STORAGE[config.storage])
        _write_model_summary(final, preset, result)
        result.final_dir = final
        say(f'wrote {final}')
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _loop(accelerator, net, optimizer, scheduler, state, train: SplitData, val: SplitData,
          eval_index, history, preset, config, out, say) -> TrainResult:
    recipe = preset.recipe
    procs, rank = accelerator.num_processes, accelerator.process_index
    per_step = recipe.frames_per_step
    budget = config.max_minutes * 60 if config.max_minutes else None
    started = time.monotonic()
    stopped_by_time = stopped_at_step = False
    pad = accelerator.unwrap_model(net).adapter.pad_token_id
    bar = tqdm(total=recipe.steps, initial=state.step, desc='train', unit='step',
               disable=not accelerator.is_main_process, mininterval=5, dynamic_ncols=True)
    while state.step < recipe.steps:
        index = step_rows(state.step, len(train), per_step * procs, recipe.seed)
        index = index[rank * per_step:(rank + 1) * per_step].tolist()  # contiguous per rank
        images, turns = train.batch(index)
        text = pack_text(turns, pad, dict(recipe.family_weights)).to(accelerator.device)
        patches = train.patch_labels(index).to(accelerator.device) if recipe.object_loss \
            else None
        with accelerator.autocast():
            output = net(images.to(accelerator.device), text, patches)
        optimizer_step(accelerator, output.loss, net, optimizer, scheduler, recipe.grad_clip)
        state.step += 1
        loss = accelerator.reduce(output.answer_loss.detach(), 'mean').item()
        history['train'].append([state.step, loss])
        postfix = {'loss': f'{loss:.3f}', 'lr': f'{scheduler.get_last_lr()[0]:.2e}'}
        if output.aux_loss is not None:
            aux = accelerator.reduce(output.aux_loss.detach(), 'mean').item()
            history.setdefault('aux', []).append([state.step, aux])
            postfix['aux'] = f'{aux:.3f}'
        bar.update(1)
        bar.set_postfix(postfix)
        out_of_time = budget is not None and time.monotonic() - started > budget
        at_stop = config.stop_at is not None and state.step >= config.stop_at
        done = state.step >= recipe.steps or out_of_time or at_stop
        if state.step % recipe.eval_every == 0 or done:
            _evaluate(accelerator, net, val, eval_index, pad, state.step, history, say)
        if state.step % recipe.save_every == 0 or done:
            _save(accelerator, out, state.step, history)
        if out_of_time and state.step < recipe.steps:
            stopped_by_time = True
            say(f'time budget of {config.max_minutes} min reached at step {state.step} of '
                f'{recipe.steps}: saved; continue with --resume')
            break
        if at_stop and state.step < recipe.steps:
            stopped_at_step = True
            say(f'--stop-at {config.stop_at} reached: saved; continue with --resume')
            break
    bar.close()
    return TrainResult(state.step, stopped_by_time, stopped_at_step, None, history,
                       time.monotonic() - started)


@torch.no_grad()
def _evaluate(accelerator, net, val: SplitData, index: list[int], pad: int, step: int,
              history: dict, say) -> None:
    """Record validation loss, teacher-forced exact match and greedy planning L2 (subset)."""
    if accelerator.is_main_process and index:
        module = accelerator.unwrap_model(net)
        module.eval()
        losses, hits = [], defaultdict(list)
        for i in index:
            images, turns = val.batch([i])
            text = pack_text(turns, pad).to(accelerator.device)
            with accelerator.autocast():
                output = module(images.to(accelerator.device), text)
            losses.append(output.answer_loss.item())
            for family, ok in zip(text.families, turn_exact(output, text.turns).tolist()):
                hits[family].append(ok)
        frames = [val.frames[i] for i in index]
        planning = (language_planning_check(module.adapter, frames, [val.turns[i] for i in index])
                    if module.text_only else planning_check(module.adapter, frames))
        module.train()
        every = [h for v in hits.values() for h in v]
        record = {'step': step, 'loss': float(np.mean(losses)),
                  'exact': float(np.mean(every)), 'turns': len(every),
                  'families': {f: float(np.mean(v)) for f, v in sorted(hits.items())},
                  'planning': planning.as_json()}
        history['val'].append(record)
        per_family = ', '.join(f'{f} {100 * a:.0f}%' for f, a in record['families'].items())
        say(f'step {step}: val loss {record["loss"]:.4f}, exact {100 * record["exact"]:.1f}% '
            f'of {len(every)} turns ({per_family}); {_planning_line(planning)}')
    accelerator.wait_for_everyone()


def _planning_line(check: PlanningCheck) -> str:
    if not check.items:
        return 'no planning question to check'
    model = f'{check.l2_3s:.2f} m' if check.l2_3s is not None else 'n/a'
    velocity = (f'{check.constant_velocity_3s:.2f} m' if check.constant_velocity_3s is not None
                else 'n/a')
    return (f'greedy planning L2 at 3 s {model} ({check.parsed}/{check.items} parsed; '
            f'constant velocity {velocity})')


def _save(accelerator, out: Path, step: int, history: dict, keep: int = 2) -> None:
    checkpoints = out / 'checkpoints'
    accelerator.save_state(str(checkpoints / f'step-{step}'))
    if accelerator.is_main_process:
        _write_json(out / 'history.json', history)
        plot_curves(history, out / 'curves.png')
        for old in sorted(checkpoints.glob('step-*'), key=_step_of)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _precision(config: VLMTrainConfig, cpu: bool) -> str:
    """Resolve ``--precision``: 'auto' is bf16 where the device multiplies it natively."""
    if cpu:
        return cpu_precision(config.precision)
    if config.precision != 'auto':
        return config.precision
    return 'bf16' if torch.cuda.is_bf16_supported() else 'no'


def _check_language_stage(recipe: Recipe, config: VLMTrainConfig) -> None:
    """Refuse what needs the views in a text-only stage: it would do nothing, silently."""
    flags = {'--vision-init': config.vision_init, '--freeze-vision': config.freeze_vision}
    used = recipe.view_settings() + [flag for flag, value in flags.items() if value]
    if recipe.text_only and used:
        raise ValueError(f'preset {config.preset} is a language stage (text only, no views): '
                         f'{", ".join(used)} need the views; leave them to the VLM stage that '
                         'starts from it (--init-from)')


def _check_family_weights(recipe: Recipe, train: SplitData) -> None:
    """Raise ValueError if a weighted family names no train turn (a typo would weigh nothing)."""
    present = {turn.family for frame in train.turns for turn in frame.turns}
    unknown = sorted({family for family, _ in recipe.family_weights} - present)
    if unknown:
        raise ValueError(f'--family-weight: no train turn has the family {", ".join(unknown)}; '
                         f'the families are {", ".join(sorted(present))}')


def _match_visual_scale(net: PackedVLM, train: SplitData, say) -> None:
    """Rescale the projector (once: a resumed run loads the rescaled weights)."""
    images, _ = train.batch(list(range(min(4, len(train)))))
    visual, text = rescale_projector(net, images.to(net.mean.device))
    say(f'visual tokens rescaled from mean norm {visual:.1f} to {text:.1f}, the norm of text '
        'tokens after LLM layer 1 (training/visual_scale.py)')


def _trained(directory: Path, device: torch.device):
    """Return ``(model, tokenizer, processor)`` of a trained checkpoint, in float32."""
    from ..models.adapters import load_adapter
    from ..models.loading import LoadSpec

    # Packed training needs a 4-D mask: sdpa, never flash attention.
    adapter = load_adapter(LoadSpec(str(directory), device=str(device), dtype='float32',
                                    attn_implementation='sdpa'))
    return adapter.model, adapter.tokenizer, adapter.image_processor


def _tokenizer(accelerator, directory: Path, frames, preset: Preset, resume: bool):
    from transformers import AutoTokenizer

    texts = qa_texts(frames)
    if accelerator.is_main_process and not (resume and directory.is_dir()):
        tokenizer = train_tokenizer(texts, preset.model.vocab_size, preset.model.prompt_format)
        check_round_trip(tokenizer, sorted(set(texts))[:2000])
        tokenizer.save_pretrained(directory)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def _param_groups(model, weight_decay: float) -> list[dict]:
    """Decay the matrices; leave norms, biases, embeddings and the image newline alone."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:  # a frozen tower: no update, no decay
            continue
        matrix = param.ndim >= 2 and 'embed' not in name
        (decay if matrix else plain).append(param)
    return [{'params': decay, 'weight_decay': weight_decay},
            {'params': plain, 'weight_decay': 0.0}]


def _eval_subset(frames: int, count: int, seed: int) -> list[int]:
    rng = np.random.default_rng([seed, 1234])
    return sorted(rng.permutation(frames)[:count].tolist())


def _step_of(path: Path) -> int:
    return int(path.name.split('-', 1)[1])


def _latest_checkpoint(directory: Path) -> Path | None:
    found = [p for p in directory.glob('step-*') if p.is_dir() and p.name[5:].isdigit()]
    return max(found, key=_step_of) if found else None


def _history_until(path: Path, step: int) -> dict:
    if not path.is_file():
        return {'train': [], 'val': []}
    history = json.loads(path.read_text())
    return {**{k: [r for r in history[k] if r[0] <= step] for k in ('train', 'aux')
               if k in history},
            'val': [r for r in history['val'] if r['step'] <= step]}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def _write_run_info(out: Path, config: VLMTrainConfig, preset: Preset, data: Path,
                    procs: int) -> None:
    """Record what was run: config, preset, processes and the data set's own description."""
    meta = {}
    for split in ('train', 'val'):  # drive-vlm data synth records seeds and options here
        path = data / f'{split}.meta.json'
        if path.is_file():
            meta[split] = json.loads(path.read_text())
    info = {'config': {k: str(v) for k, v in asdict(config).items()}, 'preset': preset.as_dict(),
            'processes': procs, 'torch': torch.__version__, 'data_meta': meta}
    _write_json(out / 'run.json', info)


def _write_model_summary(final: Path, preset: Preset, result: TrainResult) -> None:
    last = result.history['val'][-1] if result.history['val'] else None
    _write_json(final / 'training_summary.json', {
        'preset': preset.as_dict(), 'steps': result.step,
        'stopped_by_time': result.stopped_by_time,
        'train_seconds_this_session': round(result.seconds, 1), 'last_validation': last,
    })
