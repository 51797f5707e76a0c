"""Anchors in torchvision's layout: per level, grid row-major (y, then x), then 9 anchors ratio-major.

Each level has base size s and scales s, int(s * 2^(1/3)), int(s * 2^(2/3)) (torchvision truncates:
32 -> 32, 40, 50), aspect ratios h/w in (0.5, 1, 2). A cell anchor is centred on 0 and rounded
to integers; the anchor of grid cell (y, x) is shifted by (x * stride_w, y * stride_h), so centres
sit on the cell's top-left corner, as in torchvision (weights trained with it expect that).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ASPECT_RATIOS = (0.5, 1.0, 2.0)
SCALES_PER_LEVEL = 3  # base size times 2^(0, 1/3, 2/3)
ANCHORS_PER_LOCATION = len(ASPECT_RATIOS) * SCALES_PER_LEVEL


def level_scales(base_size: int) -> tuple[int, int, int]:
    return tuple(int(base_size * 2 ** (i / SCALES_PER_LEVEL)) for i in range(SCALES_PER_LEVEL))


def cell_anchors(base_size: int) -> Tensor:
    """The 9 zero-centred anchors of one level, [9, 4] float32 xyxy, ratio-major (index = ratio * 3 + scale)."""
    scales = torch.tensor(level_scales(base_size), dtype=torch.float32)
    ratios = torch.tensor(ASPECT_RATIOS, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(base_size: int, grid_hw: tuple[int, int], stride_hw: tuple[int, int]) -> Tensor:
    """Anchors of one level for a feature grid: [gh * gw * 9, 4] float32 xyxy input pixels."""
    gh, gw = grid_hw
    shift_x = torch.arange(gw, dtype=torch.float32) * stride_hw[1]
    shift_y = torch.arange(gh, dtype=torch.float32) * stride_hw[0]
    sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    sx, sy = sx.reshape(-1), sy.reshape(-1)
    shifts = torch.stack([sx, sy, sx, sy], dim=1)
    return (shifts[:, None, :] + cell_anchors(base_size)[None, :, :]).reshape(-1, 4)


def anchors_for_grids(
    anchor_sizes: tuple[int, ...], image_hw: tuple[int, int], grids_hw: list[tuple[int, int]]
) -> list[Tensor]:
    """Per-level anchors for an input of ``image_hw`` whose FPN maps have ``grids_hw``.

    Strides are image // grid per axis (integer division, as torchvision).
    """
    return [
        grid_anchors(size, grid, (image_hw[0] // grid[0], image_hw[1] // grid[1]))
        for size, grid in zip(anchor_sizes, grids_hw, strict=True)
    ]


def grids_for_input(image_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """FPN grid sizes P3..P7 for an input size (3x3 stride-2 convs with padding 1 round up)."""
    grids = []
    h, w = image_hw
    # conv1 /2, maxpool /2, layer2 /2 -> P3 at /8; each stride-2 stage is ceil(x / 2).
    for _ in range(3):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    for _ in range(5):
        grids.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return grids
