"""The train state of both protocols: updates done, params, optimizer state, and the
algorithm's own state (Fishr's EMA, GroupDRO's weights, ...; None when it has none)."""

from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32: number of updates done
    params: Any
    opt_state: Any
    alg_state: Any = None
