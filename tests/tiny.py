"""The tiny DataSpec the model tests build networks from (one definition; a test adds what it needs with
`dataclasses.replace`)."""

from __future__ import annotations

from ctr.batch import DataSpec

TINY_SPEC = DataSpec(
    n_users=30,
    n_items=40,
    user_feature_names=("age", "gender"),
    item_feature_names=("genre",),
    user_feature_vocab=(5, 3),
    item_feature_vocab=(7,),
    user_sid_sizes=(4, 3),
    item_sid_sizes=(5, 4, 3),
    history_len=6,
    user_count_max=50.0,
    item_count_max=80.0,
)
