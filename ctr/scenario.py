"""Each sample's scenario for multi-scenario networks (STAR, the LLM4MSR meta layers): `batch.scenario` once the
Batch carries it, else a frozen per-user / per-item code table read from `scenarios.parquet` (semid.scenarios).

Shapes: B = batch size, S = number of scenarios.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec
from semid import scenarios as SC
from semid import schema
from semid.errors import InputError


class ScenarioIndex(nn.Module):
    """`forward(batch) -> (B,) int64` scenario codes in 0..n_scenarios-1.

    Args:
        spec: the data facts (n_users / n_items size the code table; `n_scenarios` is used once DataSpec has it).
        scenarios: path of a `scenarios.parquet`; None = the batch must carry `scenario`.
        n_scenarios: the number of scenarios when no table is given and the DataSpec does not say.
    """

    def __init__(self, spec: DataSpec, *, scenarios: str | None = None, n_scenarios: int | None = None):
        super().__init__()
        self.key: str | None = None
        self.names: tuple[str, ...] = ()
        codes = torch.zeros(0, dtype=torch.long)
        if scenarios is not None:
            table = SC.read(scenarios)
            self.key, self.names = table.key, table.names
            n = spec.n_users if table.key == schema.USER else spec.n_items
            keys = torch.from_numpy(table.table[table.key].to_numpy().astype("int64"))  # (N,)
            if len(keys) != n or int(keys.min()) != 0 or int(keys.max()) != n - 1:
                raise InputError(
                    f"the scenario table covers {len(keys)} of the data's {n} {table.key} ids",
                    file=scenarios,
                    column=table.key,
                    fix="rebuild scenarios.parquet from this run's prepared directory",
                )
            codes = torch.zeros(n, dtype=torch.long)
            codes[keys] = torch.from_numpy(table.table[SC.SCENARIO].to_numpy().astype("int64"))
        # rebuilt from the file at every load (not checkpoint state): it is the data's, not the model's
        self.register_buffer("codes", codes, persistent=False)  # (n_users or n_items,)
        n_spec = getattr(spec, "n_scenarios", None)
        self.n_scenarios = len(self.names) or n_spec or n_scenarios or 0
        if self.n_scenarios < 1:
            raise InputError(
                "the multi-scenario network does not know the number of scenarios",
                fix="give the network `scenarios: <run>/scenarios.parquet` (semid.scenarios.write)",
            )

    def forward(self, batch: Batch) -> Tensor:
        given = getattr(batch, "scenario", None)
        if given is not None:
            return given.long()  # (B,)
        if self.key is None:
            raise InputError(
                "the batch carries no scenario and the network was given no scenario table",
                fix="give the network `scenarios: <run>/scenarios.parquet`",
            )
        ids = batch.user if self.key == schema.USER else batch.item  # (B,)
        return self.codes[ids]  # (B,)
