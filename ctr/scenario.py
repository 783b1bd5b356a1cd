"""Each sample's scenario for multi-scenario networks (STAR, the LLM4MSR meta layers): `batch.scenario`, served by
`CTRDataModule(scenarios=...)` from a `scenarios.parquet` (semid.scenarios), with the count and names in the DataSpec.

Shapes: B = batch size, S = number of scenarios.
"""

from __future__ import annotations

from torch import Tensor

from ctr.batch import Batch, DataSpec
from semid.errors import InputError

FIX = "give the data module `scenarios: <run>/scenarios.parquet` (written by semid.scenarios.write)"


def n_scenarios(spec: DataSpec, network: str) -> int:
    """The number of scenarios the data serves; refused when it serves none."""
    if spec.n_scenarios < 1:
        raise InputError(
            f"the multi-scenario network {network} needs scenarios and the data has none", fix=FIX
        )
    return spec.n_scenarios


def scenario_of(batch: Batch) -> Tensor:
    """(B,) int64 scenario codes of the batch; refused when the batch carries none."""
    if batch.scenario.numel() != batch.label.numel():
        raise InputError("the batch carries no scenario (or not one per row)", fix=FIX)
    return batch.scenario.long()  # (B,)
