"""
ReconPruner's adversarial foreground/background reconstruction training (FastDriveVLA, seed 002).

The rule (paper Sec. "Adversarial Foreground-Background Reconstruction", docs/reconpruner.md):

- scores S from the scorer (``pruning.reconpruner.ReconScorer``) on frozen encoder+projector
  tokens V of one view;
- ``M = (S > 0)`` through a straight-through estimator: the forward pass uses the hard 0/1 mask,
  the backward pass the gradient of ``sigmoid(S)`` (``M~ = M + sigmoid(S) - sg(sigmoid(S))``;
  the paper's eq. 4 leaves the continuous surrogate implicit, this is ours);
- ``V_fore = M~ ⊙ V``, ``V_back = (1 - M~) ⊙ V``;
- one light MAE-style decoder (``recon_decoder.ReconDecoder``) rebuilds the foreground image
  ``I ⊙ F`` from V_fore and the background image ``I ⊙ (1 - F)`` from V_back (F: the GT
  foreground mask);
- loss per part ``0.2 (1 - SSIM) + 0.8 MSE``; total ``0.5 L_fore + 0.5 L_back``.

Without the background half the scorer gains by marking every token positive (the decoder then
sees everything); the background half makes dropping a background token pay. ``background=False``
trains the ablation, to show that degenerate solution.

The trainer works on pre-encoded tokens (the encoder is frozen, so V is computed once per image):
``ReconData`` holds tokens, square-resized images and pixel masks. It runs on ``accelerate``
(one CPU, one GPU or DDP under ``accelerate launch``; bf16 where asked), shows a tqdm bar, writes
a resumable state every ``save_every`` steps, validates (loss, foreground AUROC of the scores,
share of positive scores) every ``eval_every`` steps and draws the curves to a PNG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
import json
import math
from pathlib import Path
import time

import torch
from torch import nn, Tensor
import torch.nn.functional as F

from .curves import plot_recon_history
from .loop import optimizer_step, step_rows, warmup_cosine
from .recon_decoder import DecoderConfig, ReconDecoder
from .ssim import ssim
from ..pruning.reconpruner import ReconScorer, ScorerConfig

STATE_FILE = 'state.pt'
HISTORY_FILE = 'history.json'
PLOT_FILE = 'loss.png'


# --- the objective -----------------------------------------------------------------------------

def straight_through_mask(scores: Tensor) -> Tensor:
    """Hard ``(S > 0)`` forward, ``d sigmoid(S) / dS`` backward (module doc)."""
    soft = torch.sigmoid(scores)
    hard = (scores > 0).to(soft.dtype)
    # (soft - soft) is exactly 0 in floating point, so the forward value is exactly the hard M
    return hard + (soft - soft.detach())


def recon_loss(pred: Tensor, target: Tensor, ssim_weight: float = 0.2) -> Tensor:
    """``ssim_weight (1 - SSIM) + (1 - ssim_weight) MSE`` (FastDriveVLA eq. 7, lambda = 0.2)."""
    return ssim_weight * (1.0 - ssim(pred, target)) + (1.0 - ssim_weight) * F.mse_loss(pred,
                                                                                       target)


@dataclass(frozen=True)
class LossParts:
    total: Tensor
    fore: Tensor
    back: Tensor
    positive_share: Tensor  # share of tokens with S > 0 (detached)


class ReconObjective(nn.Module):
    """Scorer + decoder: the adversarial reconstruction loss of one batch (module doc)."""

    def __init__(self, scorer: ReconScorer, decoder: ReconDecoder, alpha: float = 0.5,
                 ssim_weight: float = 0.2, background: bool = True) -> None:
        super().__init__()
        self.scorer = scorer
        self.decoder = decoder
        self.alpha = alpha
        self.ssim_weight = ssim_weight
        self.background = background

    def forward(self, tokens: Tensor, images: Tensor, masks: Tensor,
                fixed_mask: Tensor | None = None) -> LossParts:
        """
        Return the loss of one batch.

        ``tokens`` ``[B, N, D]``, ``images`` ``[B, 3, S, S]`` in [0, 1], ``masks`` ``[B, 1, S, S]``
        (1 = foreground).

        ``fixed_mask`` ``[B, N]`` replaces M wherever it is 0 or 1 (-1: keep the scorer's M):
        the decoder's random masks, through which no gradient reaches the scorer.
        """
        scores = self.scorer(tokens)
        m = straight_through_mask(scores)
        if fixed_mask is not None:  # rows with entries >= 0 take them instead (no gradient)
            fixed = fixed_mask.to(m.dtype)
            m = torch.where(fixed >= 0, fixed, m)
        m = m.unsqueeze(-1).to(tokens.dtype)
        b = tokens.shape[0]
        part = torch.cat([torch.zeros(b, dtype=torch.long, device=tokens.device),
                          torch.ones(b, dtype=torch.long, device=tokens.device)])
        pred = self.decoder(torch.cat([m * tokens, (1 - m) * tokens]), part).float()
        pred_fore, pred_back = pred.chunk(2)
        fore = recon_loss(pred_fore, images * masks, self.ssim_weight)
        back = recon_loss(pred_back, images * (1 - masks), self.ssim_weight)
        total = self.alpha * fore + (1 - self.alpha) * back if self.background else fore
        return LossParts(total, fore, back, (scores > 0).float().mean().detach())


# --- data --------------------------------------------------------------------------------------

@dataclass
class ReconData:
    """
    Pre-encoded training views.

    ``tokens`` ``[n, N, D]`` (encoder+projector output, any float dtype), ``images``
    ``[n, 3, S, S]`` uint8 (the view square-resized, S = grid * patch_pixels), ``masks``
    ``[n, 1, S, S]`` bool (foreground). Row-major tokens: token ``r * grid + c`` covers pixel
    block ``(r, c)``.
    """

    tokens: Tensor
    images: Tensor
    masks: Tensor

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if self.tokens.dim() != 3 or n == 0:
            raise ValueError(f'tokens must be [n >= 1, N, D], got {tuple(self.tokens.shape)}')
        if self.images.shape[0] != n or self.masks.shape[0] != n:
            raise ValueError(f'{n} token rows but {self.images.shape[0]} images and '
                             f'{self.masks.shape[0]} masks')
        grid = math.isqrt(self.tokens.shape[1])
        if grid * grid != self.tokens.shape[1]:
            raise ValueError(f'{self.tokens.shape[1]} tokens per view is not a square patch grid')
        size = self.images.shape[-1]
        if size % grid or self.images.shape[-2] != size:
            raise ValueError(f'images of {tuple(self.images.shape[-2:])} px do not split into a '
                             f'{grid} x {grid} grid of square patches')

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def grid(self) -> int:
        return math.isqrt(self.tokens.shape[1])

    @property
    def patch_pixels(self) -> int:
        return self.images.shape[-1] // self.grid

    def patch_labels(self, threshold: float = 0.5) -> Tensor:
        """``[n, N]`` bool: a token is foreground when that share of its pixels is."""
        p = self.patch_pixels
        share = F.avg_pool2d(self.masks.float(), kernel_size=p, stride=p)
        return share.flatten(1) >= threshold

    def batch(self, idx: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        tokens = self.tokens[idx].to(device=device, dtype=torch.float32)
        images = self.images[idx].to(device=device, dtype=torch.float32) / 255.0
        return tokens, images, self.masks[idx].to(device=device, dtype=torch.float32)

    def token_rms(self) -> float:
        sample = self.tokens[:256].float()
        return float(sample.pow(2).mean().sqrt().clamp_min(1e-6))

    def subset(self, idx: Tensor) -> ReconData:
        return ReconData(self.tokens[idx], self.images[idx], self.masks[idx])

    def save(self, path: Path, key: dict) -> None:
        torch.save({'key': key, 'tokens': self.tokens, 'images': self.images,
                    'masks': self.masks}, path)

    @staticmethod
    def load(path: Path, key: dict) -> ReconData | None:
        """Return the cached data at ``path`` if made with the same ``key``, else None."""
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location='cpu', weights_only=True)
        except (OSError, RuntimeError, EOFError):
            return None  # a cache cut short by an interrupted run: rebuild it
        if blob.get('key') != key:
            return None
        return ReconData(blob['tokens'], blob['images'], blob['masks'])


def planted_task(n: int = 256, grid: int = 8, patch_pixels: int = 4, dim: int = 32,
                 seed: int = 0) -> ReconData:
    """
    Make a planted foreground task: bright squares on a textured background, and tokens.

    Each image holds 1-3 bright squares (1-3 patches wide, at any pixel offset, channels in
    [0.75, 1]) on a dark background (channels in [0, 0.55]): an independent random colour per
    patch plus fine texture, so no background patch can be guessed from its neighbours and
    rebuilding it needs its token as much as rebuilding a square needs its own. Tokens come from
    a fixed random patch conv (stride = patch) with a tanh plus a fixed position code, a
    stand-in for a frozen vision encoder: the foreground is visible in the tokens but not
    labelled.
    """
    gen = torch.Generator().manual_seed(seed)
    size = grid * patch_pixels
    coarse = torch.rand(n, 3, grid, grid, generator=gen)
    field_ = F.interpolate(coarse, size=(size, size), mode='nearest')
    texture = torch.rand(n, 3, size, size, generator=gen)
    images = 0.45 * field_ + 0.1 * texture
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            side = int(torch.randint(patch_pixels, 3 * patch_pixels + 1, (1,), generator=gen))
            r0, c0 = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=gen))
            images[i, :, r0:r0 + side, c0:c0 + side] = 0.75 + 0.25 * torch.rand(
                3, 1, 1, generator=gen)
            masks[i, :, r0:r0 + side, c0:c0 + side] = True
    # The stand-in encoder is the same for every seed (only the images differ), as a frozen one.
    enc = torch.Generator().manual_seed(20250806)
    conv = torch.randn(dim, 3, patch_pixels, patch_pixels, generator=enc) / patch_pixels
    pos = 0.3 * torch.randn(grid * grid, dim, generator=enc)
    with torch.no_grad():
        feats = torch.tanh(F.conv2d(images * 2 - 1, conv, stride=patch_pixels))
        tokens = feats.flatten(2).transpose(1, 2) + pos
    return ReconData(tokens, (images.clamp(0, 1) * 255).round().to(torch.uint8), masks)


# --- metrics -----------------------------------------------------------------------------------

def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``labels`` (ties count half)."""
    s, y = scores.flatten().double(), labels.flatten().bool()
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float('nan')
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inverse = torch.unique(s, return_inverse=True)
    if uniq.numel() < s.numel():
        sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
        counts = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(
            0, inverse, torch.ones_like(ranks))
        ranks = (sums / counts)[inverse]
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


@torch.no_grad()
def score_views(scorer: ReconScorer, tokens: Tensor, batch: int = 64,
                device: torch.device | str = 'cpu') -> Tensor:
    """``[n, N]`` float32 scores of every view, in batches."""
    out = []
    was_training = scorer.training
    scorer.eval()
    for start in range(0, tokens.shape[0], batch):
        x = tokens[start:start + batch].to(device=device, dtype=torch.float32)
        out.append(scorer(x).float().cpu())
    scorer.train(was_training)
    return torch.cat(out)


@dataclass(frozen=True)
class ScorerQuality:
    """How well scores separate GT foreground tokens from background ones."""

    auroc: float
    positive_share: float  # share of tokens with S > 0 (M = 1)
    foreground_share: float  # share of GT foreground tokens
    recall_at_quarter: float  # foreground recall when each view keeps its top 25% tokens


def scorer_quality(scorer: ReconScorer, data: ReconData,
                   device: torch.device | str = 'cpu') -> ScorerQuality:
    scores = score_views(scorer, data.tokens, device=device)
    labels = data.patch_labels()
    k = max(1, round(0.25 * scores.shape[1]))
    top = scores.topk(k, dim=1).indices
    hit = labels.gather(1, top).sum()
    return ScorerQuality(auroc(scores, labels), float((scores > 0).float().mean()),
                         float(labels.float().mean()),
                         float(hit / labels.sum().clamp_min(1)))


# --- the training loop -------------------------------------------------------------------------

@dataclass(frozen=True)
class ReconTrainConfig:
    """ReconPruner training recipe (AdamW, linear warm-up, cosine decay)."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    background: bool = True  # False: the fore-only ablation (the degenerate solution)
    alpha: float = 0.5  # weight of L_fore (paper: 0.5)
    ssim_weight: float = 0.2  # lambda of eq. 7 (paper: 0.2)
    scorer_lr_ratio: float = 0.1  # scorer lr / decoder lr: the decoder must lead (ours)
    decoder_warmup_steps: int = 100  # decoder alone, on random masks, scorer frozen (ours)
    random_mask_share: float = 0.0  # later, the share of rows still on random masks (ours)
    initial_positive_share: float = 0.2  # S > 0 on this share of tokens at the start (ours)
    scorer_heads: int = 0  # 0: hidden // 64
    scorer_mlp: int = 0  # 0: 2 * hidden
    decoder: dict = field(default_factory=lambda: {'patch_pixels': 8, 'width': 128,
                                                   'layers': 2, 'heads': 4})
    eval_every: int = 200
    save_every: int = 200
    mixed_precision: str = 'no'  # 'no' | 'bf16' | 'fp16' (accelerate)
    cpu: bool = False  # force the CPU even when a GPU is present

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainOutcome:
    scorer: ReconScorer
    decoder: ReconDecoder
    history: dict
    steps: int
    seconds: float
    resumed_from: int = 0
    stopped_by_time: bool = False


@torch.no_grad()
def calibrate_bias(scorer: ReconScorer, data: ReconData, share: float) -> None:
    """
    Shift the score bias so that ``share`` of the first training tokens start with S > 0.

    Ours: the scorer has two stable end states, M = the foreground and M = everything (the
    decoder then sees all it needs in V_fore, and an absent token there is ambiguous). Starting
    sparse puts it in the first one's basin: absent tokens are then mostly background, so
    keeping a background token out of V_fore costs little while V_back gains it.
    """
    scores = score_views(scorer, data.tokens[:256])
    scorer.score.bias -= torch.quantile(scores.flatten(), 1.0 - share)


def warmup_mask(step: int, tokens: Tensor, config: ReconTrainConfig) -> Tensor | None:
    """
    Return the random masks of this step, or None when every row uses the scorer's M.

    ``[B, N]`` with -1 where a row follows the scorer and a fair coin (0/1) per token in the
    rows that train the decoder on random masks: all rows during the decoder warm-up, then a
    ``random_mask_share`` of them. Seeded by step, so a resumed run draws the same.
    """
    share = 1.0 if step < config.decoder_warmup_steps else config.random_mask_share
    if share <= 0:
        return None
    gen = torch.Generator().manual_seed(config.seed * 7919 + step)
    coin = (torch.rand(tokens.shape[:2], generator=gen) < 0.5).float()
    rows = torch.rand(tokens.shape[0], generator=gen) < share
    return torch.where(rows[:, None], coin, torch.full_like(coin, -1.0)).to(tokens.device)


def build_modules(config: ReconTrainConfig, hidden: int, grid: int,
                  token_scale: float) -> tuple[ReconScorer, ReconDecoder]:
    torch.manual_seed(config.seed)
    scorer = ReconScorer(ScorerConfig(hidden, config.scorer_heads, config.scorer_mlp))
    decoder = ReconDecoder(DecoderConfig(hidden, grid, **config.decoder), token_scale)
    return scorer, decoder


def train_reconpruner(train: ReconData, config: ReconTrainConfig, val: ReconData | None = None,
                      run_dir: str | Path | None = None, resume: bool = True,
                      progress: bool = True, max_seconds: float | None = None,
                      log: Callable[[str], None] = print) -> TrainOutcome:
    """
    Train a scorer on ``train`` (module doc); return it with its decoder and the history.

    With ``run_dir`` the run keeps ``state.pt`` (resumable every ``save_every`` steps and at the
    end), ``history.json`` and ``loss.png`` there; ``resume`` continues a matching state.
    ``max_seconds`` stops early (state saved) so a later run can resume.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    accelerator = Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision)
    device = accelerator.device
    run = Path(run_dir) if run_dir else None
    hidden = train.tokens.shape[-1]
    scorer, decoder = build_modules(config, hidden, train.grid, train.token_rms())
    objective = ReconObjective(scorer, decoder, config.alpha, config.ssim_weight,
                               config.background)
    optimizer = torch.optim.AdamW([
        {'params': list(scorer.parameters()), 'lr_ratio': config.scorer_lr_ratio},
        {'params': list(decoder.parameters()), 'lr_ratio': 1.0},
    ], lr=config.lr, weight_decay=config.weight_decay)
    history = {'step': [], 'loss': [], 'fore': [], 'back': [], 'positive_share': [],
               'val_step': [], 'val_loss': [], 'val_auroc': [], 'val_positive_share': []}
    start = 0
    calibrate_bias(scorer, train, config.initial_positive_share)
    if run is not None and resume and (run / STATE_FILE).is_file():
        state = torch.load(run / STATE_FILE, map_location='cpu', weights_only=False)
        if state['config'] == config.as_dict() and state['data_size'] == len(train):
            objective.load_state_dict(state['objective'])
            optimizer.load_state_dict(state['optimizer'])
            history, start = state['history'], state['step']
            log(f'resuming from step {start} ({run / STATE_FILE})')
        else:
            log(f'{run / STATE_FILE} is from another recipe or data set: starting over')
    for group in optimizer.param_groups:  # a resumed optimizer holds the decayed rate
        group['lr'] = config.lr * group['lr_ratio']
        group.pop('initial_lr', None)
    factor = warmup_cosine(config.steps, config.warmup_steps, config.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [
        lambda s: factor(s + start) * (s + start >= config.decoder_warmup_steps),
        lambda s: factor(s + start)])
    # The scheduler stays outside prepare(): accelerate would step it once per process.
    objective, optimizer = accelerator.prepare(objective, optimizer)
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps,
               disable=not progress or not accelerator.is_main_process, desc='reconpruner')
    t0, window, stopped, done = time.monotonic(), [], False, start
    for step in bar:
        idx = torch.from_numpy(step_rows(step, len(train), config.batch_size, config.seed,
                                         accelerator.process_index,
                                         accelerator.num_processes))
        tokens, images, masks = train.batch(idx, device)
        objective.train()
        with accelerator.autocast():
            parts = objective(tokens, images, masks, warmup_mask(step, tokens, config))
        optimizer_step(accelerator, parts.total, objective, optimizer, scheduler, config.grad_clip)
        window.append(torch.stack([parts.total.detach(), parts.fore.detach(),
                                   parts.back.detach(), parts.positive_share]).float().cpu())
        done = step + 1
        if done % 10 == 0 or done == config.steps:
            mean = torch.stack(window).mean(0).tolist()
            window = []
            history['step'].append(done)
            for key, value in zip(('loss', 'fore', 'back', 'positive_share'), mean):
                history[key].append(value)
            bar.set_postfix(loss=f'{mean[0]:.4f}', pos=f'{mean[3]:.2f}')
        if val is not None and (done % config.eval_every == 0 or done == config.steps):
            _validate(accelerator.unwrap_model(objective), val, device, done, history)
            bar.write(f'step {done}: val loss {history["val_loss"][-1]:.4f}, foreground AUROC '
                      f'{history["val_auroc"][-1]:.3f}, positive share '
                      f'{history["val_positive_share"][-1]:.2f}')
        stopped = max_seconds is not None and time.monotonic() - t0 > max_seconds
        if run is not None and accelerator.is_main_process and (
                done % config.save_every == 0 or done == config.steps or stopped):
            _save_state(run, accelerator.unwrap_model(objective), optimizer, config, done,
                        history, len(train))
        if stopped:
            break
    bar.close()
    unwrapped = accelerator.unwrap_model(objective)
    return TrainOutcome(unwrapped.scorer.float().cpu(), unwrapped.decoder.float().cpu(), history,
                        done, time.monotonic() - t0, start, stopped)


@torch.no_grad()
def _validate(objective: ReconObjective, val: ReconData, device, step: int,
              history: dict) -> None:
    objective.eval()
    losses = []
    for begin in range(0, len(val), 64):
        idx = torch.arange(begin, min(begin + 64, len(val)))
        losses.append(float(objective(*val.batch(idx, device)).total) * idx.numel())
    quality = scorer_quality(objective.scorer, val, device)
    history['val_step'].append(step)
    history['val_loss'].append(sum(losses) / len(val))
    history['val_auroc'].append(quality.auroc)
    history['val_positive_share'].append(quality.positive_share)
    objective.train()


def _save_state(run: Path, objective: ReconObjective, optimizer, config: ReconTrainConfig,
                step: int, history: dict, data_size: int) -> None:
    run.mkdir(parents=True, exist_ok=True)
    state = {'config': config.as_dict(), 'step': step, 'history': history,
             'data_size': data_size, 'objective': objective.state_dict(),
             'optimizer': optimizer.state_dict()}
    tmp = run / (STATE_FILE + '.tmp')
    torch.save(state, tmp)
    tmp.replace(run / STATE_FILE)  # atomic: an interrupted save leaves the last good state
    (run / HISTORY_FILE).write_text(json.dumps(history) + '\n')
    plot_recon_history(history, run / PLOT_FILE)
