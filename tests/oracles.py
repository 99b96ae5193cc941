"""Straightforward loop implementations of docs/method.md sections 2-4, used as test oracles.

They are written from the spec, one pixel at a time, in float32 and in the spec's order of
operations, and share no code with ``warpage.py``.
"""

from __future__ import annotations

import numpy as np


f32 = np.float32


def field_oracle(mask: np.ndarray, handles: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``(H, W, 2)`` displacement ``(d_row, d_col)``; handles/targets are ``(K, 2)`` latent ``(row, col)``."""
    height, width = mask.shape
    rows, cols = np.nonzero(mask)
    lo = (f32(rows.min()), f32(cols.min()))
    hi = (f32(rows.max()), f32(cols.max()))
    centre = ((lo[0] + hi[0]) / f32(2), (lo[1] + hi[1]) / f32(2))
    radius = np.sqrt((centre[0] - lo[0] + f32(1e-6)) ** 2 + (centre[1] - lo[1] + f32(1e-6)) ** 2, dtype=f32)
    field = np.zeros((height, width, 2), dtype=f32)
    for r in range(height):
        for c in range(width):
            if not mask[r, c]:
                continue
            vectors, weights = [], []
            for (hr, hc), (tr, tc) in zip(handles, targets):
                hr, hc, tr, tc = f32(hr), f32(hc), f32(tr), f32(tc)
                ac = (f32(r) - hr, f32(c) - hc)
                ac_len = np.sqrt(ac[0] * ac[0] + ac[1] * ac[1], dtype=f32)
                if ac[0] == 0 and ac[1] == 0:
                    s = f32(1)
                else:
                    oa = (hr - centre[0], hc - centre[1])
                    e = (ac[0] / ac_len, ac[1] / ac_len)
                    l0 = (ac[0] * oa[0] + ac[1] * oa[1]) / ac_len
                    with np.errstate(invalid="ignore", divide="ignore"):
                        l1 = np.sqrt(radius * radius - (oa[0] * oa[0] + oa[1] * oa[1]) + l0 * l0, dtype=f32)
                        ap = ((l1 - l0) * e[0], (l1 - l0) * e[1])
                        pc = (ac[0] - ap[0], ac[1] - ap[1])
                        s = np.sqrt(pc[0] ** 2 + pc[1] ** 2, dtype=f32) / np.sqrt(ap[0] ** 2 + ap[1] ** 2, dtype=f32)
                    s = f32(0) if not np.isfinite(s) else f32(min(max(s, 0), 1))
                vectors.append((s * (tr - hr), s * (tc - hc)))
                weights.append(f32(1) / (ac_len + f32(1e-4)))
            total = sum(weights)
            field[r, c, 0] = sum(w / total * v[0] for w, v in zip(weights, vectors))
            field[r, c, 1] = sum(w / total * v[1] for w, v in zip(weights, vectors))
    return field


def relocate_oracle(latents: np.ndarray, mask: np.ndarray, field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-major relocation, first source wins; returns ``(relocated, null)``."""
    height, width = mask.shape
    out = latents.copy()
    null = mask.copy()
    taken = np.zeros_like(mask)
    for r in range(height):
        for c in range(width):
            if not mask[r, c]:
                continue
            dr = int(np.clip(np.round(f32(r) + field[r, c, 0]), 0, height - 1))
            dc = int(np.clip(np.round(f32(c) + field[r, c, 1]), 0, width - 1))
            if taken[dr, dc]:
                continue
            taken[dr, dc] = True
            out[..., dr, dc] = latents[..., r, c]
            null[dr, dc] = False
    return out, null


def bnni_oracle(latents: np.ndarray, null: np.ndarray) -> np.ndarray:
    """The paper's symmetric BNNI, one null pixel at a time, reading only the unfilled latent."""
    height, width = null.shape
    out = latents.astype(np.float64).copy()
    for r in range(height):
        for c in range(width):
            if not null[r, c]:
                continue
            acc, weight_sum = 0.0, 0.0
            for dr, dc in ((0, -1), (0, 1), (-1, 0), (1, 0)):
                k = 1
                while 0 <= r + k * dr < height and 0 <= c + k * dc < width:
                    if not null[r + k * dr, c + k * dc]:
                        acc = acc + latents[..., r + k * dr, c + k * dc].astype(np.float64) / k
                        weight_sum += 1.0 / k
                        break
                    k += 1
            if weight_sum > 0:
                out[..., r, c] = acc / weight_sum
    return out


def shift_oracle(latents: np.ndarray, mask: np.ndarray, offset: tuple[int, int], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Section 8, one destination pixel at a time: ``(pasted latents, null)``; ``null`` is the place a
    ``"move"`` left (empty for ``"copy"``), still to be filled."""
    height, width = mask.shape
    out = latents.copy()
    pasted = np.zeros_like(mask)
    for r in range(height):
        for c in range(width):
            sr, sc = r - offset[0], c - offset[1]
            if 0 <= sr < height and 0 <= sc < width and mask[sr, sc]:
                out[..., r, c] = latents[..., sr, sc]
                pasted[r, c] = True
    null = mask & ~pasted if mode == "move" else np.zeros_like(mask)
    return out, null
