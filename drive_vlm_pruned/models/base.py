"""
The small interface every VLM family implements, and the sequence assembly they share.

An adapter turns camera images into per-view visual tokens (``encode``), and visual tokens plus
the kept indices and a question into LLM prefill inputs (``build_inputs``), keeping every kept
token at its ORIGINAL position in the unpruned sequence. Prefill and decoding then go through the
model's own entry point (``model(inputs_embeds=..., position_ids=...)``) in pipeline/generate.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn, Tensor

from .prompts import (
    DRIVING_SYSTEM,
    IMAGE_MARK,
    prompt_format_of,
    PromptFormat,
    six_view_text,
    user_text,
    view_slot_order,
)
from ..pruning import KeptTokens, ViewTokens


@dataclass(frozen=True)
class Pixels:
    """Encoder input for all views of all samples (view v of sample b is image ``b*V + v``)."""

    values: Tensor
    grid_thw: Tensor | None = None  # [images, 3] patch grid, for Qwen2.5-VL's dynamic resolution


@dataclass(frozen=True)
class VisualFeatures:
    """
    Encoder + projector output of every view, split into prunable rows and a fixed suffix.

    ``tokens.features[v]`` ``[B, N_v, D]`` are the patch tokens a pruner may drop;
    ``suffix[v]`` ``[B, s_v, D]`` (s_v may be 0) always follows the view's kept rows, e.g.
    LLaVA-OneVision's image-newline token.
    """

    tokens: ViewTokens
    suffix: tuple[Tensor, ...]
    grid_thw: Tensor | None = None  # [B * V, 3], Qwen2.5-VL only


@dataclass(frozen=True)
class PrefillInputs:
    """Left-padded LLM inputs for a batch, with ORIGINAL positions of the kept tokens."""

    inputs_embeds: Tensor  # [B, L, D]
    attention_mask: Tensor  # [B, L] long, 0 at left padding
    position_ids: Tensor  # [B, L] (1-D RoPE) or [3, B, L] (Qwen2.5-VL's 3-D mrope)
    next_position: Tensor  # [B]: position of the first generated token
    full_length: list[int]  # unpruned prompt length per sample
    kept_length: list[int]  # pruned prompt length per sample (without padding)
    visual_rows: tuple[Tensor, ...]  # per view [B, n_v]: rows of its prunable tokens (0-padded)
    visual_counts: Tensor  # [B, V] real entries of visual_rows (CPU long)
    text_len: int  # rows at the end that hold the instruction (the last prompt piece)
    text_mask: Tensor  # [B, text_len] bool: real instruction rows of each sample


@dataclass(frozen=True)
class PromptPieces:
    """
    Token ids around the V image slots: ``pieces[0] <slot 0> pieces[1] ... pieces[V]``.

    Slot k holds view ``view_order[k]`` of the frame (None: view k), for prompt formats whose
    training prompt lists the cameras in another order than the frame (Impromptu-VLA's).
    """

    pieces: tuple[list[int], ...]
    view_order: tuple[int, ...] | None = None

    def slot_views(self) -> tuple[int, ...]:
        return self.view_order or tuple(range(len(self.pieces) - 1))


SYSTEM = f'<|im_start|>system\n{DRIVING_SYSTEM}<|im_end|>\n'


class VLMAdapter(ABC):
    """One VLM family behind the pipeline: encode, build prompt inputs, name the LLM parts."""

    family: ClassVar[str]
    image_open: ClassVar[str] = ''  # text right before each view's image tokens
    image_close: ClassVar[str] = ''  # text right after them

    def __init__(self, model, tokenizer, image_processor, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = device
        self.dtype = dtype
        # How this checkpoint was trained to be prompted (config drive_vlm_prompt_format).
        self.prompt_format: PromptFormat = prompt_format_of(model.config, self.family)
        # The vision backend (vision/backends.py); eager torch until load_adapter picks another.
        self.vision = self.vision_module()
        self.vision_backend = 'torch'
        self.llm_weights = 'native'  # set by load_adapter (models/llm_weights.py)

    def vision_module(self) -> nn.Module | None:
        """Return the exportable ``[n, 3, H, W] -> [n, N, D]`` encoder, or None if not."""
        return None

    def vision_metadata(self) -> dict[str, str]:
        """Return what an exported graph must record to be loaded again (onnx_export keys)."""
        return {}

    def use_vision_backend(self, backend) -> None:
        """Encode through ``backend`` (vision/backends.py ``VisionBackend``) from now on."""
        self.vision, self.vision_backend = backend, backend.name

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Return the fixed (3, H, W) encoder input of this model."""
        size = self.image_processor.size
        return (3, size['height'], size['width'])

    def preprocess(self, images: Sequence[np.ndarray]) -> Pixels:
        """
        Turn RGB uint8 ``H x W x 3`` images (all views of all samples) into pixel values.

        Each view becomes one square encoder input (bicubic, antialiased), normalised with the
        checkpoint's image mean and std: LLaVA-OneVision's base crop, one InternVL tile.
        """
        proc = self.image_processor
        size = (proc.size['height'], proc.size['width'])
        mean = torch.tensor(proc.image_mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(proc.image_std, device=self.device).view(1, 3, 1, 1)
        out = []
        for img in images:
            # np.require copies read-only arrays (e.g. decoded from a bag's buffer): torch warns
            # on (and may write through) a non-writable array.
            x = torch.from_numpy(np.require(img, requirements=['C', 'W'])).to(self.device)
            x = x.permute(2, 0, 1)[None].float()
            x = torch.nn.functional.interpolate(x, size=size, mode='bicubic', align_corners=False,
                                                antialias=True)
            out.append(x.clamp(0, 255) / 255.0)
        return Pixels(((torch.cat(out) - mean) / std).to(self.dtype))

    @abstractmethod
    def encode(self, pixels: Pixels, batch: int) -> VisualFeatures:
        """Run the vision encoder and projector; views of sample b are rows ``b*V .. b*V+V-1``."""

    def prompt(self, question: str, names: Sequence[str]) -> PromptPieces:
        """Tokenize the chat-formatted six-view template around the image slots."""
        if self.prompt_format.name != 'default':
            return self._format_prompt(question, tuple(names))
        text = list(six_view_text(tuple(names)))
        text = [t + self.image_open for t in text[:-1]] + [text[-1]]
        text = [text[0]] + [self.image_close + t for t in text[1:]]
        text[0] = SYSTEM + '<|im_start|>user\n' + text[0]
        text[-1] = text[-1] + question + '<|im_end|>\n<|im_start|>assistant\n'
        return PromptPieces(tuple(self.tokenizer(t, add_special_tokens=False).input_ids
                                  for t in text))

    def _format_prompt(self, question: str, names: tuple[str, ...]) -> PromptPieces:
        """Tokenize the prompt of a checkpoint's training format (models/prompts.py)."""
        fmt = self.prompt_format
        order = view_slot_order(fmt, names)
        user = user_text(fmt, tuple(names[v] for v in order), question)
        if fmt.chat == 'llama3':
            pieces = self._llama3_pieces(fmt.system, user)
        elif fmt.chat in ('chatml', 'internvl2_5'):
            # InternVL's 'internvl2_5' (MPT separators) renders the same text as ChatML; it
            # differs in the tokenizer's BOS in front (fmt.bos).
            text = (f'<|im_start|>system\n{fmt.system}<|im_end|>\n<|im_start|>user\n{user}'
                    '<|im_end|>\n<|im_start|>assistant\n')
            parts = text.split(IMAGE_MARK)
            parts = [p + self.image_open for p in parts[:-1]] + [parts[-1]]
            parts = [parts[0]] + [self.image_close + p for p in parts[1:]]
            pieces = [self.tokenizer(p, add_special_tokens=False).input_ids for p in parts]
            if fmt.bos and self.tokenizer.bos_token_id is not None:
                pieces[0] = [self.tokenizer.bos_token_id, *pieces[0]]
        else:
            raise ValueError(f'prompt format {fmt.name!r}: unknown chat {fmt.chat!r}')
        if len(pieces) != len(names) + 1:
            raise ValueError(f'prompt format {fmt.name!r} gave {len(pieces) - 1} image slots for '
                             f'{len(names)} views')
        identity = order == tuple(range(len(names)))
        return PromptPieces(tuple(pieces), None if identity else order)

    def _llama3_pieces(self, system: str, user: str) -> list[list[int]]:
        """
        Token ids as DriveMM's ``preprocess_llama3`` builds them, split at the image marks.

        The tokenizer's own chat template renders the system turn, the user turn and an empty
        assistant turn one call each; the leading BOS of the later calls and the final token
        (the empty turn's end-of-turn) are dropped, leaving the assistant header open.
        """
        tok = self.tokenizer

        def turn(role: str, content: str) -> list[int]:
            text = tok.apply_chat_template([{'role': role, 'content': content}], tokenize=False)
            return tok(text, add_special_tokens=False).input_ids

        ids = turn('system', system) + turn('user', user)[1:] + turn('assistant', '')[1:-1]
        mark = tok.convert_tokens_to_ids(IMAGE_MARK)
        if mark is None or mark == tok.unk_token_id:
            raise ValueError(f'the tokenizer has no {IMAGE_MARK} token: convert the checkpoint '
                             'with drive-vlm convert drivemm')
        pieces, current = [], []
        for token in ids:
            if token == mark:
                pieces.append(current)
                current = []
            else:
                current.append(token)
        return [*pieces, current]

    @property
    def image_token_id(self) -> int:
        """Return the placeholder token id the model's embedding expects at image rows."""
        return self.model.config.image_token_id

    @property
    def eos_token_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        return [ids] if isinstance(ids, int) else list(ids)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.eos_token_ids[0]

    @property
    def text_config(self):
        return self.model.config.get_text_config()

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids)

    def build_inputs(self, feats: VisualFeatures, kept: KeptTokens,
                     prompts: Sequence[PromptPieces]) -> PrefillInputs:
        """Assemble embeddings and original positions for each sample, then left-pad."""
        samples = [self._assemble(feats, kept, b, p) for b, p in enumerate(prompts)]
        pad = self.embed(torch.tensor([self.pad_token_id], device=self.device))
        return _left_pad(samples, pad)

    @property
    def decoder_layers(self):
        """Return the LLM's decoder layers (hooks for in-LLM pruning attach here)."""
        return self.model.get_decoder().layers

    def full_sequence_ids(self, prompt: PromptPieces, view_tokens: Sequence[int]) -> list[int]:
        """Return the unpruned prompt ids: each image slot holds its view's placeholders."""
        ids = list(prompt.pieces[0])
        for v, piece in zip(prompt.slot_views(), prompt.pieces[1:]):
            ids += [self.image_token_id] * view_tokens[v] + list(piece)
        return ids

    @property
    def attn_implementation(self) -> str:
        return self.text_config._attn_implementation

    def _assemble(self, feats: VisualFeatures, kept: KeptTokens, b: int, prompt: PromptPieces):
        embeds, positions = [], []
        rows: list[Tensor | None] = [None] * (len(prompt.pieces) - 1)
        slot_views = prompt.slot_views()
        cursor = 0
        for slot, piece in enumerate(prompt.pieces):
            ids = torch.tensor(piece, dtype=torch.long, device=self.device)
            embeds.append(self.embed(ids[None])[0])
            positions.append(torch.arange(cursor, cursor + len(piece), device=self.device))
            cursor += len(piece)
            if slot == len(prompt.pieces) - 1:
                break
            v = slot_views[slot]  # the frame's view shown in this slot
            view = feats.tokens.features[v][b]
            idx = kept.indices[b][v].to(self.device)
            suffix = feats.suffix[v][b]
            start = sum(e.shape[0] for e in embeds)
            rows[v] = torch.arange(start, start + idx.numel(), device=self.device)
            embeds += [view[idx].to(self.dtype), suffix.to(self.dtype)]
            n_view = feats.tokens.valid_counts()[b, v].item()
            positions += [cursor + idx,
                          torch.arange(cursor + n_view, cursor + n_view + suffix.shape[0],
                                       device=self.device)]
            cursor += n_view + suffix.shape[0]
        return _Row(torch.cat(embeds), torch.cat(positions), cursor, rows, len(prompt.pieces[-1]))


@dataclass(frozen=True)
class _Row:
    embeds: Tensor
    positions: Tensor
    full_length: int
    visual_rows: list[Tensor]
    text_len: int


def _left_pad(samples: list[_Row], pad_embed: Tensor) -> PrefillInputs:
    length = max(r.embeds.shape[0] for r in samples)
    text_len = max(r.text_len for r in samples)
    views = len(samples[0].visual_rows)
    counts = torch.tensor([[r.numel() for r in s.visual_rows] for s in samples])
    widths = counts.max(0).values.tolist()
    vis = [torch.zeros(len(samples), w, dtype=torch.long, device=pad_embed.device)
           for w in widths]
    text_mask = torch.zeros(len(samples), text_len, dtype=torch.bool, device=pad_embed.device)
    embeds, masks, positions = [], [], []
    for b, s in enumerate(samples):
        e, p = s.embeds, s.positions
        gap = length - e.shape[0]
        for v in range(views):
            vis[v][b, :counts[b, v]] = s.visual_rows[v] + gap
        text_mask[b, text_len - s.text_len:] = True
        gap = length - e.shape[0]
        embeds.append(torch.cat([pad_embed.expand(gap, -1).to(e.dtype), e]))
        masks.append(torch.cat([torch.zeros(gap, dtype=torch.long, device=e.device),
                                torch.ones(e.shape[0], dtype=torch.long, device=e.device)]))
        positions.append(torch.cat([torch.zeros(gap, dtype=torch.long, device=e.device), p]))
    full = [s.full_length for s in samples]
    return PrefillInputs(
        inputs_embeds=torch.stack(embeds),
        attention_mask=torch.stack(masks),
        position_ids=torch.stack(positions),
        next_position=torch.tensor(full, device=pad_embed.device),
        full_length=full,
        kept_length=[s.embeds.shape[0] for s in samples],
        visual_rows=tuple(vis),
        visual_counts=counts,
        text_len=text_len,
        text_mask=text_mask,
    )
