"""
ReconPruner (FastDriveVLA, seed 002): a learned foreground scorer that keeps top-scored tokens.

Rule (paper Sec. "ReconPruner", docs/reconpruner.md): a learnable query ``Q`` (1 x D) goes with
a view's visual tokens ``V`` (N x D) through ONE bidirectional (non-causal) transformer layer at
the LLM hidden size, ``[Q*, V*] = Layer([Q, V])``; the score of token i is
``S_i = Linear_{D->1}(V*_i ⊙ Q*)``. Each view keeps the top ``k_v`` tokens by S (its budget from
the allocator), before the LLM; kept tokens keep their original positions (the pipeline does
that).

The layer is pre-norm self-attention + a SwiGLU MLP with RMSNorm, the shape of a Qwen2 decoder
layer without RoPE (the tokens carry the vision encoder's position embeddings already). One
deviation from the paper, ours: ``Q*`` and ``V*`` pass a final RMSNorm before the product, as a
decoder layer's output does in the LLM, so the score does not scale with the token norm.

Weights are a safetensors file (``save_weights`` / ``load_scorer``) whose metadata records the
layer shape; ``drive-vlm train reconpruner`` writes them. A checkpoint directory may carry its
weights as ``reconpruner.safetensors`` (the default for that model). Every bad file raises a
named ``ValueError`` subclass: ``WeightsMissingError``, ``WeightsCorruptError``,
``HiddenSizeMismatchError``.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
import torch
from torch import nn, Tensor
import torch.nn.functional as F

from .base import Pruner, Selection, Stage
from .groups import topk_picks
from .tokens import ViewTokens

FORMAT = 'drive-vlm-reconpruner'
FORMAT_VERSION = '1'
DEFAULT_WEIGHTS_NAME = 'reconpruner.safetensors'
TRAIN_HINT = ('train weights with `drive-vlm train reconpruner --model DIR --data DIR --out '
              'W.safetensors`, then pass --reconpruner-weights W.safetensors (node parameter '
              'reconpruner_weights), or save them as DIR/' + DEFAULT_WEIGHTS_NAME +
              ', the default for the model in DIR')


class WeightsMissingError(ValueError):
    """No ReconPruner weights: none given and no default next to the model, or no such file."""


class WeightsCorruptError(ValueError):
    """A ReconPruner weights file that cannot be read or does not hold a ReconPruner."""


class HiddenSizeMismatchError(ValueError):
    """Weights trained for one hidden size, used on visual tokens of another."""


@dataclass(frozen=True)
class ScorerConfig:
    """The shape of a ReconPruner scorer; stored in the weights file's metadata."""

    hidden_size: int
    num_heads: int = 0  # 0: hidden_size // 64 (at least 1), as Qwen2's head width
    intermediate_size: int = 0  # 0: 2 * hidden_size (a light SwiGLU)

    def resolved(self) -> ScorerConfig:
        if self.hidden_size < 1:
            raise ValueError(f'hidden_size={self.hidden_size} must be >= 1')
        heads = self.num_heads or max(1, self.hidden_size // 64)
        while self.hidden_size % heads:  # the largest head count <= the asked one that divides D
            heads -= 1
        inner = self.intermediate_size or 2 * self.hidden_size
        return ScorerConfig(self.hidden_size, heads, inner)

    def metadata(self) -> dict[str, str]:
        return {'format': FORMAT, 'version': FORMAT_VERSION, 'hidden_size': str(self.hidden_size),
                'num_heads': str(self.num_heads),
                'intermediate_size': str(self.intermediate_size)}


class BidirectionalLayer(nn.Module):
    """Pre-norm transformer layer with full (non-causal) attention and a SwiGLU MLP."""

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        d, inner = config.hidden_size, config.intermediate_size
        self.heads = config.num_heads
        self.attn_norm = nn.RMSNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d, bias=False)
        self.mlp_norm = nn.RMSNorm(d, eps=1e-6)
        self.gate_up = nn.Linear(d, 2 * inner, bias=False)
        self.down = nn.Linear(inner, d, bias=False)

    def forward(self, x: Tensor, key_ok: Tensor | None = None) -> Tensor:
        """``x`` ``[G, L, D]``; ``key_ok`` ``[G, L]`` bool, False at padding (never attended)."""
        g, n, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(g, n, 3, self.heads, -1).permute(
            2, 0, 3, 1, 4)
        mask = None if key_ok is None else key_ok[:, None, None, :]
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(att.transpose(1, 2).reshape(g, n, d))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class ReconScorer(nn.Module):
    """
    ``S = Linear(V* ⊙ Q*)`` with ``[Q*, V*] = Layer([Q, V])`` (module doc).

    ``forward(tokens [G, N, D], valid [G, N] | None) -> [G, N]`` float32 scores; each group is
    scored on its own (one camera view of one sample), all groups in one batched call.
    """

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        self.config = config = config.resolved()
        d = config.hidden_size
        self.query = nn.Parameter(torch.randn(1, 1, d) / math.sqrt(d))
        self.layer = BidirectionalLayer(config)
        self.final_norm = nn.RMSNorm(d, eps=1e-6)
        self.score = nn.Linear(d, 1)
        # Small initial scores: M = (S > 0) starts near a coin flip, with live STE gradients.
        nn.init.normal_(self.score.weight, std=0.02 / math.sqrt(d))
        nn.init.zeros_(self.score.bias)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def forward(self, tokens: Tensor, valid: Tensor | None = None) -> Tensor:
        g = tokens.shape[0]
        x = torch.cat([self.query.to(tokens.dtype).expand(g, -1, -1), tokens], dim=1)
        key_ok = None
        if valid is not None:
            key_ok = torch.cat([valid.new_ones(g, 1), valid], dim=1)
        h = self.final_norm(self.layer(x, key_ok))
        fused = h[:, 1:] * h[:, :1]  # V* ⊙ Q*, the query broadcast over the view's tokens
        scores = self.score(fused).squeeze(-1).float()
        return scores if valid is None else scores.masked_fill(~valid, float('-inf'))


def save_weights(scorer: ReconScorer, path: str | Path,
                 extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the scorer's weights (float32) and its shape as safetensors metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in scorer.state_dict().items()}
    meta = {**(extra_metadata or {}), **scorer.config.metadata()}
    save_file(state, str(path), metadata={k: str(v) for k, v in meta.items()})
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """Return the metadata of a weights file; the named errors for a missing or corrupt one."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsCorruptError(
            f'ReconPruner weights {path} are not a readable safetensors file ({err}); the file '
            f'is corrupt or truncated: {TRAIN_HINT}') from None
    if meta.get('format') != FORMAT:
        raise WeightsCorruptError(
            f'{path} is a safetensors file but not ReconPruner weights (metadata format '
            f'{meta.get("format")!r}, expected {FORMAT!r}): {TRAIN_HINT}')
    return meta


def weights_config(path: str | Path) -> ScorerConfig:
    """Read the scorer shape a weights file records (without loading its tensors)."""
    meta = read_metadata(path)
    try:
        return ScorerConfig(int(meta['hidden_size']), int(meta['num_heads']),
                            int(meta['intermediate_size']))
    except (KeyError, ValueError):
        raise WeightsCorruptError(
            f'ReconPruner weights {path} have damaged metadata {meta}: {TRAIN_HINT}') from None


def check_hidden_size(path: str | Path, weights_size: int, model_size: int | None) -> None:
    """Raise ``HiddenSizeMismatchError`` naming both sizes when they differ."""
    if model_size is not None and int(model_size) != int(weights_size):
        raise HiddenSizeMismatchError(
            f'ReconPruner weights {path} were trained for hidden size {weights_size}, but this '
            f"model's visual tokens have hidden size {model_size}: use weights trained on this "
            f'model ({TRAIN_HINT})')


def load_scorer(path: str | Path, hidden_size: int | None = None,
                device: torch.device | str = 'cpu',
                dtype: torch.dtype = torch.float32) -> ReconScorer:
    """
    Load a scorer for inference (eval mode, no gradients), cached per file version and device.

    ``hidden_size`` (the model's LLM width) is checked against the file when given.
    """
    path = _existing(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(device), dtype)
    scorer = _CACHE.get(key)
    if scorer is None:
        scorer = _load(path).to(device=device, dtype=dtype).eval().requires_grad_(False)
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = scorer
    check_hidden_size(path, scorer.hidden_size, hidden_size)
    return scorer


_CACHE: dict[tuple, ReconScorer] = {}
_CACHE_SIZE = 8


def _load(path: Path) -> ReconScorer:
    config = weights_config(path)
    try:
        scorer = ReconScorer(config)
    except ValueError as err:
        raise WeightsCorruptError(
            f'ReconPruner weights {path}: bad shape metadata ({err})') from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsCorruptError(
            f'ReconPruner weights {path} cannot be read ({err}): {TRAIN_HINT}') from None
    try:
        scorer.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise WeightsCorruptError(
            f'ReconPruner weights {path} do not match the shape their metadata records '
            f'({first[0] if first else err}): {TRAIN_HINT}') from None
    for name, value in state.items():
        if not bool(torch.isfinite(value).all()):
            raise WeightsCorruptError(f'ReconPruner weights {path}: tensor {name!r} holds NaN or '
                                      f'inf: {TRAIN_HINT}')
    return scorer


def _existing(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsMissingError(f'ReconPruner weights {path} do not exist: {TRAIN_HINT}')
    return path


def default_weights(model_dir: str | Path) -> Path:
    """Return where a checkpoint directory keeps its own ReconPruner weights."""
    return Path(model_dir) / DEFAULT_WEIGHTS_NAME


def resolve_weights(weights: str | Path | None, model_dir: str | Path | None = None) -> Path:
    """
    Return the weights file to use: ``weights`` if given, else the model directory's default.

    ``WeightsMissingError`` says what was looked for and how to get weights.
    """
    if weights:
        return _existing(weights)
    if model_dir:
        default = default_weights(model_dir)
        if default.is_file():
            return default
        raise WeightsMissingError(
            f'pruner reconpruner needs weights: none given, and the model has no default at '
            f'{default}: {TRAIN_HINT}')
    raise WeightsMissingError(f'pruner reconpruner needs weights and none were given: '
                              f'{TRAIN_HINT}')


@dataclass
class ReconPruner(Pruner):
    """
    ReconPruner, FastDriveVLA: keep each view's top-``k_v`` tokens by the learned score S.

    Give ``weights`` (a safetensors file) or a ready ``scorer``. Scoring runs per view, every
    view of every sample in one batched call, with no host synchronisation.
    """

    name = 'reconpruner'
    stage = Stage.PRE_LLM
    joint: bool = False
    weights: str | Path | None = None
    scorer: ReconScorer | None = None

    def scorer_for(self, tokens: ViewTokens) -> ReconScorer:
        """Return the scorer on the tokens' device and dtype, its hidden size checked."""
        if self.scorer is not None:
            check_hidden_size('(in memory)', self.scorer.hidden_size, tokens.dim)
            return self.scorer
        if not self.weights:
            raise WeightsMissingError(f'pruner reconpruner needs weights and none were given: '
                                      f'{TRAIN_HINT}')
        return load_scorer(self.weights, tokens.dim, tokens.device, tokens.features[0].dtype)

    def scores(self, tokens: ViewTokens) -> tuple[Tensor, ...]:
        """Return every token's score: per view ``[B, N_v]`` float32, ``-inf`` at padding."""
        scorer = self.scorer_for(tokens)
        out = []
        for v, feats in enumerate(tokens.features):
            out.append(scorer(feats.to(_dtype_of(scorer)), tokens.valid_mask(v)))
        return tuple(out)

    def _picks(self, sel: Selection) -> Tensor:
        scorer = self.scorer_for(sel.tokens)
        x = sel.groups.stack(sel.tokens.features).to(_dtype_of(scorer))
        scores = scorer(x, sel.groups.valid)
        return topk_picks(scores, sel.groups.valid, sel.groups.k)


def _dtype_of(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
