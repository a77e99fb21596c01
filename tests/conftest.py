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
SMOKE_TEST = "test_bench.py::test_every_group_runs_in_the_smoke_setting"


def pytest_collection_finish(session):
    """`bench/run.py --smoke` takes minutes on one core: when its test is selected, start it now in a
    process of its own, beside the rest of the suite (CI's second core is otherwise idle); the
    test's fixture (tests/test_bench.py) waits for it."""
    if any(item.nodeid.endswith(SMOKE_TEST) for item in session.items):
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="odelt-bench-smoke-"))
        session.config.stash[SMOKE_KEY] = start_smoke(work)


def start_smoke(work: Path) -> tuple:
    """`bench/run.py --smoke` in the background: (process, figures path, log path); output to a
    file (a pipe nobody reads until the test would stall the run once it fills)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out, log = work / "smoke.json", work / "smoke.log"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, str(root / "bench" / "run.py"), "--smoke", "--out", str(out)],
                                cwd=root, stdout=f, stderr=subprocess.STDOUT)
    return proc, out, log


SMOKE_KEY = pytest.StashKey[tuple]()


def pytest_sessionfinish(session):
    """The background smoke run does not outlive the session, nor its folder."""
    started = session.config.stash.get(SMOKE_KEY, None)
    if started is not None:
        import shutil

        proc, out, _ = started
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(out.parent, ignore_errors=True)


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
