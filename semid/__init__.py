"""Semantic-ID tokenizer: prepared datasets, content encoders, collaborative alignment, RQ-VAE and ID tables."""

from __future__ import annotations

__version__ = "0.1.0"
