"""Static check of our TensorRT code: mypy against the TensorRT 10.13 stubs in typings/
(made by tools/make_trt_stubs.py from tensorrt-stubs). TensorRT itself never runs here, so this
is the only check that our calls exist with these signatures."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "typings" / "tensorrt" / "__init__.pyi"


def _mypy(paths, cache_dir):
    # follow_imports=skip: other packages' modules are not re-checked here (and torch is not
    # analysed, which keeps this fast); .pyi stubs such as typings/tensorrt are still read.
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
           "--follow-imports=skip", "--cache-dir", str(cache_dir), "--no-error-summary", *map(str, paths)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)


def _our_files():
    files = [*sorted((ROOT / "odelt" / "engines").glob("*.py")), ROOT / "odelt" / "cli" / "engines_cmds.py",
             ROOT / "odelt" / "errors.py", ROOT / "odelt" / "runtime" / "backends" / "tensorrt.py"]
    return [f for f in files if f.is_file()]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    pytest.importorskip("mypy")
    assert STUB.is_file(), "typings/tensorrt/__init__.pyi missing: run tools/make_trt_stubs.py"
    return tmp_path_factory.mktemp("mypy-cache")


def test_engines_typecheck_against_tensorrt_stubs(cache_dir):
    files = _our_files()
    assert ROOT / "odelt" / "engines" / "tensorrt.py" in files
    assert ROOT / "odelt" / "runtime" / "backends" / "tensorrt.py" in files
    res = _mypy(files, cache_dir)
    assert res.returncode == 0, res.stdout + res.stderr


def test_stubs_are_consulted(cache_dir, tmp_path):
    """A misspelt TensorRT method must fail: proves mypy reads the stub and does not treat
    `tensorrt` as Any (which would make the check above pass vacuously)."""
    bad = tmp_path / "uses_trt.py"
    bad.write_text("import tensorrt as trt\n\n\n"
                   "def bind(ctx: trt.IExecutionContext, ptr: int) -> None:\n"
                   "    ctx.set_tensor_addres('x', ptr)\n")
    res = _mypy([bad], cache_dir)
    assert res.returncode == 1, res.stdout + res.stderr
    assert '"IExecutionContext" has no attribute "set_tensor_addres"' in res.stdout
    good = tmp_path / "uses_trt_ok.py"
    good.write_text(bad.read_text().replace("set_tensor_addres(", "set_tensor_address("))
    assert _mypy([good], cache_dir).returncode == 0


def test_committed_stub_is_what_the_generator_makes(tmp_path):
    source = ROOT / ".venv" / "trt-stubs"
    if not (source / "tensorrt_bindings" / "tensorrt.pyi").is_file():
        pytest.skip("tensorrt-stubs not installed in .venv/trt-stubs (see the Makefile)")
    out = tmp_path / "__init__.pyi"
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_trt_stubs.py"), "--source", str(source),
                    "--out", str(out)], check=True, capture_output=True, timeout=60)
    assert out.read_text() == STUB.read_text()
