"""
Qwen2.5-VL's windowed ViT + merger for one fixed patch grid, as an exportable module.

The model's own ``visual(pixel_values, grid_thw)`` derives the rotary table, the window
permutation and the attention segments (``cu_seqlens``) from ``grid_thw`` at run time, with
``.tolist()`` loops: data-dependent, so it neither exports nor compiles to one graph. For a fixed
grid all of that is constant. ``QwenVisionEncoder`` precomputes it once with transformers' own
helpers and then runs the model's own submodules (patch embedding, each block's norms, qkv/proj
and MLP, the merger) on ``[views, patches, patch_dim] -> [views, patches / 4, D]``:

- views are the batch dimension, so one view's tokens never attend to another view's;
- full-attention blocks attend over all patches of a view, with no mask;
- window blocks gather each window into its own (padded) batch row, with a key mask that hides
  the padding, so attention costs O(patches x window) rather than O(patches^2).

Exporting (``torch.onnx.export``) uses eager attention (plain MatMul/Softmax that ONNX Runtime and
TensorRT 10 both parse); eager torch uses SDPA, which never holds the patches x patches weights
of a full-attention block in memory. Both are checked against ``model.visual`` in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn, Tensor
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    apply_rotary_pos_emb_vision,
    eager_attention_forward,
)
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

ATTENTION = {'eager': eager_attention_forward, 'sdpa': sdpa_attention_forward}


@dataclass(frozen=True)
class WindowLayout:
    """
    Constant indices of one image's window attention, in the model's window-permuted order.

    ``units`` is the model's ``window_index`` (merge units in window order); ``rows[w, s]`` is the
    permuted patch in slot ``s`` of window ``w`` (0 in padding slots, which ``valid`` hides);
    ``slots[p]`` is where permuted patch ``p`` sits in the flattened ``[windows * width]`` rows.
    """

    units: Tensor  # [patches / unit] long
    rows: Tensor  # [windows, width] long
    valid: Tensor  # [windows, width] bool
    slots: Tensor  # [patches] long


def window_layout(grid_hw: tuple[int, int], merge: int, window_size: int,
                  patch_size: int) -> WindowLayout:
    """Lay out the windows of one ``(grid_h, grid_w)`` image as transformers' helper does."""
    grid = torch.tensor([[1, *grid_hw]])
    units, cu_seqlens = get_vision_window_index(grid, merge, window_size, patch_size)
    lengths = cu_seqlens.diff().long()  # patches per window (no empty windows: unique_consecutive)
    width = int(lengths.max())
    slot = torch.arange(width)
    valid = slot < lengths[:, None]
    rows = torch.where(valid, cu_seqlens[:-1, None].long() + slot, 0)
    # Windows are consecutive in the permuted order, so the valid slots read row-major are
    # exactly permuted patches 0, 1, ..., patches - 1.
    slots = (torch.arange(len(lengths))[:, None] * width + slot)[valid]
    return WindowLayout(units.long(), rows, valid, slots)


class QwenVisionEncoder(nn.Module):
    """
    ``visual(...).pooler_output`` for views of one fixed patch grid, with no data-dependent ops.

    Input: the processor's ``pixel_values`` of ``views`` images of grid ``(1, grid_h, grid_w)``,
    reshaped to ``[views, grid_h * grid_w, patch_dim]``; output ``[views, grid_h * grid_w / 4, D]``
    in the model's merged-token order. ``attention`` forces 'eager' or 'sdpa'; by default eager
    while exporting and SDPA otherwise (see the module docstring).
    """

    def __init__(self, visual, grid_hw: tuple[int, int], attention: str | None = None) -> None:
        super().__init__()
        if attention not in (None, *ATTENTION):
            raise ValueError(f'attention {attention!r} is not one of eager, sdpa')
        merge = visual.spatial_merge_size
        if grid_hw[0] % merge or grid_hw[1] % merge:
            raise ValueError(f'patch grid {grid_hw} is not a multiple of the merge size {merge}')
        self.patch_embed = visual.patch_embed
        self.blocks = visual.blocks
        self.merger = visual.merger
        self.full_attention = frozenset(visual.fullatt_block_indexes)
        self.attention = attention
        self.grid_hw = tuple(grid_hw)
        self.patches = grid_hw[0] * grid_hw[1]
        self.unit = merge * merge
        patch = visual.patch_embed
        self.input_shape = (self.patches, patch.in_channels * patch.temporal_patch_size
                            * patch.patch_size ** 2)
        layout = window_layout(self.grid_hw, merge, visual.window_size, visual.patch_size)
        self.windows, self.width = layout.rows.shape
        device = patch.proj.weight.device
        self.register_buffer('units', layout.units.to(device), persistent=False)
        self.register_buffer('restore', torch.argsort(layout.units).to(device), persistent=False)
        self.register_buffer('rows', layout.rows.flatten().to(device), persistent=False)
        self.register_buffer('valid', layout.valid.to(device), persistent=False)
        self.register_buffer('slots', layout.slots.to(device), persistent=False)
        cos, sin = _rotary_tables(visual, self.grid_hw, layout.units, device)
        self.register_buffer('cos', cos, persistent=False)
        self.register_buffer('sin', sin, persistent=False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        views = pixel_values.shape[0]
        hidden = self.patch_embed(pixel_values.reshape(-1, self.input_shape[1]))
        # The model's permute_input_for_window_attn, batched over views.
        hidden = hidden.reshape(views, -1, self.unit, hidden.shape[-1])[:, self.units]
        hidden = hidden.reshape(views, self.patches, -1)
        for index, block in enumerate(self.blocks):
            full = index in self.full_attention
            hidden = hidden + self._attention(block.attn, block.norm1(hidden), full)
            hidden = hidden + block.mlp(block.norm2(hidden))
        merged = self.merger(hidden.reshape(-1, hidden.shape[-1]))
        return merged.reshape(views, -1, merged.shape[-1])[:, self.restore]

    def _attention(self, attn, hidden: Tensor, full: bool) -> Tensor:
        """Run ``attn`` (the model's vision attention) over a view, or over each of its windows."""
        views, dim = hidden.shape[0], hidden.shape[-1]
        qkv = attn.qkv(hidden).reshape(views, self.patches, 3, attn.num_heads, -1)
        query, key, value = qkv.unbind(2)  # [views, patches, heads, head_dim]
        query, key = apply_rotary_pos_emb_vision(query, key, self.cos, self.sin)
        mask = None
        if not full:
            query, key, value = (self._windows(t) for t in (query, key, value))
            visible = self.valid[None, :, None, None, :].expand(views, -1, -1, -1, -1)
            mask = torch.zeros(visible.shape, dtype=query.dtype, device=query.device)
            mask = mask.masked_fill(~visible, torch.finfo(query.dtype).min)
            mask = mask.reshape(views * self.windows, 1, 1, self.width)
        else:
            query, key, value = (t.transpose(1, 2) for t in (query, key, value))
        name = self.attention or ('eager' if torch.compiler.is_exporting() else 'sdpa')
        out, _ = ATTENTION[name](attn, query, key, value, attention_mask=mask,
                                 scaling=attn.scaling, dropout=0.0, is_causal=False)
        if full:
            out = out.reshape(views, self.patches, dim)
        else:  # back from [views * windows, width, ...] to the view's permuted patches
            out = out.reshape(views, self.windows * self.width, dim)[:, self.slots]
        return attn.proj(out)

    def _windows(self, states: Tensor) -> Tensor:
        """Gather ``[views, patches, heads, d]`` into ``[views * windows, heads, width, d]``."""
        views, _, heads, head_dim = states.shape
        rows = states[:, self.rows].reshape(views * self.windows, self.width, heads, head_dim)
        return rows.transpose(1, 2)


def _rotary_tables(visual, grid_hw: tuple[int, int], units: Tensor,
                   device: torch.device) -> tuple[Tensor, Tensor]:
    """Return the model's own 2-D rotary cos/sin for one image, in window-permuted order."""
    # Positions on the CPU (the helper reads the grid back), then the model's rotary module on
    # its own device, which may be 'meta' when a benchmark only inspects shapes.
    position_ids = get_vision_position_ids(torch.tensor([[1, *grid_hw]]),
                                           visual.spatial_merge_size).to(device)
    probe = torch.empty(0, device=device)  # the rotary module only reads its device
    patches = grid_hw[0] * grid_hw[1]
    return tuple(visual.permute_input_for_window_attn(t, units.to(device), seq_len=patches)
                 for t in visual.rotary_pos_emb(probe, position_ids))
