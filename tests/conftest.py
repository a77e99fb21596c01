import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def jax_small():
    """Upstream JAX outputs for a small config: (checkpoint path, config dict, cases, meta)."""
    root = FIXTURES / "odelt_jax_small"
    meta = json.loads((root / "meta.json").read_text())
    return root / "checkpoint.pkl", meta["config"], dict(np.load(root / "cases.npz")), meta
