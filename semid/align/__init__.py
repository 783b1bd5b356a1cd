"""Collaborative alignment: fine-tune the content encoder so that co-engaged items, and users and the item they
engage with next, are close (AKT-Rec aligns content with behaviour by supervised fine-tuning).

Objective: symmetric InfoNCE with in-batch negatives and temperature tau. For a batch of B pairs (a_i, p_i) with
aligned unit vectors z,

    L = 1/(2B) sum_i [ -log exp(z_ai.z_pi / tau) / sum_j exp(z_ai.z_pj / tau)
                       -log exp(z_ai.z_pi / tau) / sum_j exp(z_aj.z_pi / tau) ]

where a candidate j that is the same item as the positive (or as the query itself) is masked out of the sum, so
repeated items in a batch are not pushed apart.

- Item pairs: a user's positive (label == 1) train interactions, ordered by timestamp (ties by item_id), pair each
  positive with the next `window` positives of the same user (`co_engagement_pairs`). Pairs are drawn without
  replacement with weight (count_a * count_b) ** -popularity_power (count = positive train interactions), so head
  items do not dominate. Unique unordered pairs are split at random: `holdout` for validation (early stopping),
  `holdout` for the retrieval probe, the rest for training.
- Users: the user's text is their side features rendered as text plus the texts of their `user_history` positive
  train items before the last one (most recent first, `user_texts`); it is aligned (user head) with the embedding
  of that last positive train item -- the item they engage with next (item head). Same loss, same batch step.
- User categories (optional, `user_category_weight` > 0; AKT-Rec trains user vectors to predict the interest
  categories of the next clicks, L_u = -sim(e_t, ^e_t)): a linear head maps the user's aligned vector z_u to C
  category logits (C = categories seen in the `category_column` of items.parquet, sorted), the target y is the
  multi-hot of the categories of the same next item the user InfoNCE aligns to, and

      L_total = L + lambda * L_cat,   L_cat = -1/C sum_c [ y_c log s(w_c.z_u + b_c) + (1 - y_c) log(1 - s(.)) ]

  (s = sigmoid; mean over the users of the step) on train and validation, so early stopping sees it. BCE on a
  multi-hot target rather than the paper's similarity to a category embedding: a movie has several genres, and
  a classifier head needs no category embedding table. The head starts at the prior (zero weights), is trained
  with the rest at its own rate (`category_lr`) and is not saved: `semid assign` embeds items only (`categories`).
- Item behaviour statistics (optional, `item_stats`; AKT-Rec feeds its item encoder N-day behaviour statistics
  next to the text): every item text is encoded as "<text> | popularity: <new|low|medium|high>", the tercile of
  the item's positive train count among items that have one, "new" for none (`popularity`). Words, not numbers,
  so an item `semid assign` embeds (no train rows) reads "new" exactly as an item without positives did here.
- Parameter-efficient for CPUs: the encoder is frozen except its top `train_layers` transformer layers (a copy)
  and two projection heads (Linear D->D initialised to identity, output L2-normalised), so before training the
  aligned vectors equal the plain encoder's. The frozen lower layers run ONCE over all texts; their hidden states
  (pads dropped, packed) are cached in memory and training runs only the top layers + heads on them.
  The split is the encoder's own (`ContentEncoder.layers()` / `lower` / `upper`): BERT-style text encoders
  (BERT, RoBERTa, XLM-R, MiniLM).
- Heads only ("head" mode): with item images, with any encoder kind other than a BERT-style text encoder
  (clip, vlm, other text architectures), or with train_layers=0, no transformer layer is trained. Every item
  (text + image) and user (text, `user_max_length` tokens) is encoded once by the frozen encoder
  (`semid.encoder.encode`, so an embedding cache is reused), each vector becomes a one-token text of the same
  in-memory store, and the same loop trains only the two heads on them: same objectives, early stopping, probes.
  Images need an encoder that takes them (clip, vlm); a text encoder ignores them with a warning and keeps
  training its top layers.
- Reproducible without touching the caller's state: `align` runs in `semid.determinism.seeded(cfg.seed,
  cfg.threads)` -- torch's RNG forked and seeded (dropout), a fixed thread count (`AlignConfig.threads`, default 1,
  part of the build fingerprint) because reductions split across threads change the vectors and then the IDs.
  So a build is thread-count invariant: the same config gives the same IDs whatever torch.get_num_threads() is,
  and bit-identical run to run (checked at 1 and 2 threads: the gradients of ids repeated in a step are summed in index
  order, not with parallel atomics: `AlignModule._vectors`).
- `load_aligned_encoder` rebuilds the aligned encoder from the saved state so `semid assign` can embed new items
  exactly as `align` embedded the known ones.

Files: `pairs` (co-engagement pairs, next items, user texts, splits), `probe` (retrieval recall, hit rate),
`model` (AlignedEncoder, cached lower states, info_nce), `categories` (the user category objective),
`popularity` (item popularity words), `training` (AlignConfig, AlignModule, align, state I/O).
The package exports what a caller needs; the building blocks stay in their files.
"""

from semid.align.categories import item_categories
from semid.align.model import AlignedEncoder, usable_images
from semid.align.pairs import ANCHOR, NEXT_ITEM, POSITIVE, co_engagement_pairs, user_texts
from semid.align.popularity import popularity_levels, with_popularity
from semid.align.probe import next_item_hit_rate, retrieval_recall
from semid.align.training import AlignConfig, AlignResult, align, fingerprint_settings, load_aligned_encoder

__all__ = [
    "ANCHOR",
    "NEXT_ITEM",
    "POSITIVE",
    "AlignConfig",
    "AlignResult",
    "AlignedEncoder",
    "align",
    "fingerprint_settings",
    "co_engagement_pairs",
    "item_categories",
    "load_aligned_encoder",
    "next_item_hit_rate",
    "popularity_levels",
    "retrieval_recall",
    "usable_images",
    "user_texts",
    "with_popularity",
]
