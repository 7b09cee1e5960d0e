"""A row gather in Triton with a capped, persistent grid (torch's index_select cannot cap its grid).

Rows are copied as 32-bit words (row sizes are multiples of 4 bytes); each program walks tiles
of ``TILE`` rows with stride ``grid``, so ``grid`` bounds how many SMs the gather occupies while
the backbone computes (vllm#56926 runs the lookup on SM/2; tokenspeed#439 caps at 32).
Import only where triton is installed.
"""

from __future__ import annotations

import triton
import triton.language as tl

TILE = 16


@triton.jit
def _gather_kernel(table_ptr, idx_ptr, out_ptr, n, iters, ROW_W: tl.constexpr, BLOCK_W: tl.constexpr,
                   TILE_R: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_W)
    cmask = cols < ROW_W
    for i in range(0, iters):  # tiles past the end are fully masked
        rows = (pid + i * nprog) * TILE_R + tl.arange(0, TILE_R)
        rmask = rows < n
        src = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        m = rmask[:, None] & cmask[None, :]
        vals = tl.load(table_ptr + src[:, None] * ROW_W + cols[None, :], mask=m, other=0)
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * ROW_W + cols[None, :], vals, mask=m)


def gather(table_words, idx, out_words, grid: int | None = None) -> None:
    """``out_words[i] = table_words[idx[i]]`` for int32 ``[rows, words]`` tensors; ``grid`` caps the programs."""
    n = int(idx.shape[0])
    if n == 0:
        return
    row_w = int(table_words.shape[1])
    n_tiles = triton.cdiv(n, TILE)
    programs = n_tiles if grid is None else max(1, min(int(grid), n_tiles))
    _gather_kernel[(programs,)](table_words, idx, out_words, n, triton.cdiv(n_tiles, programs), ROW_W=row_w,
                                BLOCK_W=triton.next_power_of_2(row_w), TILE_R=TILE)
