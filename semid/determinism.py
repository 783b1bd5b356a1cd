"""Reproducible blocks of torch work: a seeded, fixed-thread context that leaves the caller's state as it was.

Library functions (alignment, RQ-VAE training) never reseed the global RNGs the caller relies on: they run inside
`seeded(seed, threads)`, which forks torch's CPU RNG (restored on exit), seeds it, and fixes the intra-op thread
count. The thread count is fixed because float reductions (GEMM backward, bf16 autocast) are split across threads:
the same seed on 1 and on 2 threads gave alignment vectors ~1e-4 apart, which an RQ-VAE can turn into other codes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int, threads: int | None = 1) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded to `seed` and `threads` intra-op threads (None: unchanged);
    on exit the caller's RNG state and thread count are restored."""
    previous = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)
