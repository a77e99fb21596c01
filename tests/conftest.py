import json
from pathlib import Path

import numpy as np
import pytest
import torch

# One torch thread: on the 2-core CI machine, two threads contending with ONNX Runtime's pool made
# sampling ~17x slower (16 Euler steps, 100 samples: 58.5 s vs 3.5 s). Set at import (session
# fixtures run before any function fixture) and again around every test, which may change it.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test starts on one torch thread and leaves the count as it found it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def jax_small():
    """Upstream JAX outputs for a small config: (checkpoint path, config dict, cases, meta)."""
    root = FIXTURES / "odelt_jax_small"
    meta = json.loads((root / "meta.json").read_text())
    return root / "checkpoint.pkl", meta["config"], dict(np.load(root / "cases.npz")), meta


class CliResult:
    """What one in-process run of the command line left: exit code, stdout, stderr."""

    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def error_line(self) -> str:
        """The one error line; fails unless the run exited 1 with exactly that on stderr."""
        lines = self.err.splitlines()
        assert self.code == 1, (self.code, self.err)
        assert "Traceback" not in self.err and len(lines) == 1, self.err
        assert lines[0].startswith("odelt-export: error: "), lines[0]
        return lines[0]


@pytest.fixture
def run_cli(capfd):
    """Run `odelt-export ARGV` in this process; stdout and stderr are captured at the file
    descriptors, so output of native libraries (ONNX Runtime, TensorRT) counts too."""
    from odelt.cli import main

    def run(argv) -> CliResult:
        capfd.readouterr()
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capfd.readouterr()
        return CliResult(code, out, err)

    return run
