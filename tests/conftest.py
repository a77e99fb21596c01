import json
from pathlib import Path

import numpy as np
import pytest
import torch

# One torch thread: on the 2-core CI machine, two threads contending with ONNX Runtime's pool made
# sampling ~17x slower (16 Euler steps, 100 samples: 58.5 s vs 3.5 s).
torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def jax_small():
    """Upstream JAX outputs for a small config: (checkpoint path, config dict, cases, meta)."""
    root = FIXTURES / "odelt_jax_small"
    meta = json.loads((root / "meta.json").read_text())
    return root / "checkpoint.pkl", meta["config"], dict(np.load(root / "cases.npz")), meta
