"""Start and stop a real `tritonserver` on a model repository (tests, bench, local serving).

The only tritonserver pip can install is the one inside the `nvidia-pytriton` wheel (2.51, Python
backend only, glibc >= 2.35). It is used here as a plain binary, not through PyTriton's API, in a
serving environment of its own (`make serve-env` -> .venv-serve: numpy < 2, which that release's
Python-backend stub needs, odelt-export without torch). Set-up facts this module encodes:
  * the stub for the environment's Python version goes into the backend folder beside
    libtriton_python.so (the wheel keeps one stub per Python version in a side folder);
  * the stub links libpython by soname: the environment's LIBDIR goes on LD_LIBRARY_PATH, or a
    different build of the same Python version may be loaded (and fail);
  * the environment's bin/ goes first on PATH, so the stub imports that environment's packages;
  * every address is 127.0.0.1 and the process is stopped by its PID (SIGINT, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from odelt.errors import BackendUnavailable

MIN_GLIBC = (2, 35)
DEFAULT_ENV = Path(__file__).resolve().parents[2] / ".venv-serve"


@dataclass(frozen=True)
class ServingEnv:
    venv: Path
    python_version: str          # "3.11"
    site: Path                   # site-packages holding pytriton/ and nvidia_pytriton.libs/
    libdir: Path                 # where libpython3.X.so lives

    @property
    def server_root(self) -> Path:
        return self.site / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.server_root / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.server_root / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"


def glibc_version() -> tuple[int, int] | None:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    parts = text.split()[-1].split(".") if text.startswith("glibc") else []
    return (int(parts[0]), int(parts[1])) if len(parts) >= 2 else None


def find_env(venv: str | os.PathLike | None = None) -> ServingEnv:
    """The serving environment, or BackendUnavailable saying why tritonserver cannot run here."""
    venv = Path(venv or os.environ.get("ODELT_SERVE_VENV") or DEFAULT_ENV)
    glibc = glibc_version()
    if glibc is None or glibc < MIN_GLIBC:
        raise BackendUnavailable(f"tritonserver needs glibc >= {'.'.join(map(str, MIN_GLIBC))}, found "
                                 f"{'.'.join(map(str, glibc)) if glibc else 'none (not a glibc system)'}")
    python = venv / "bin" / "python"
    if not python.is_file():
        raise BackendUnavailable(f"no serving environment at {venv} (expected {python}; run `make serve-env`)")
    probe = ("import json, sys, sysconfig; print(json.dumps([f'{sys.version_info[0]}.{sys.version_info[1]}', "
             "sysconfig.get_paths()['purelib'], sysconfig.get_config_var('LIBDIR') or '', "
             "sysconfig.get_config_var('LDLIBRARY') or '']))")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise BackendUnavailable(f"{python} does not run: {out.stderr.strip().splitlines()[-1:]}")
    version, site, libdir, ldlib = json.loads(out.stdout)
    env = ServingEnv(venv, version, Path(site), Path(libdir))
    if not env.binary.is_file():
        raise BackendUnavailable(f"{venv} has no tritonserver (expected {env.binary}: pip install nvidia-pytriton)")
    if not env.stub.is_file():
        raise BackendUnavailable(f"the tritonserver in {venv} has no Python-backend stub for Python {version}")
    if not ldlib.endswith(".so") and not (env.libdir / f"libpython{version}.so.1.0").is_file():
        raise BackendUnavailable(f"Python {version} in {venv} has no shared libpython (the stub needs one)")
    return env


def backends_dir(env: ServingEnv, work: Path) -> Path:
    """A backend folder whose python/ holds the wheel's Python backend plus this Python's stub."""
    target = work / "backends"
    if not (target / "python" / "triton_python_backend_stub").is_file():
        tmp = work / f".backends-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(env.server_root / "backends", tmp, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(env.stub, tmp / "python" / "triton_python_backend_stub")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class TritonServer:
    """One tritonserver process on `repo`: start(), wait_ready(), stop() (by PID)."""

    def __init__(self, env: ServingEnv, repo: str | os.PathLike, work: str | os.PathLike,
                 code: str | os.PathLike | None = None):
        """code: a source checkout whose odelt the models import instead of the environment's own
        (tests and benchmarks run the checkout they were started from)."""
        self.env, self.repo, self.work = env, Path(repo).resolve(), Path(work)
        self.code = None if code is None else Path(code).resolve()
        self.proc: subprocess.Popen | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.log = self.work / "tritonserver.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> TritonServer:
        self.work.mkdir(parents=True, exist_ok=True)
        backends = backends_dir(self.env, self.work)
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        libs = f"{self.env.site / 'nvidia_pytriton.libs'}:{self.env.libdir}"
        env = {**os.environ, "LD_LIBRARY_PATH": f"{libs}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":"),
               "PATH": f"{self.env.venv / 'bin'}:{os.environ.get('PATH', '')}", "PYTHONNOUSERSITE": "1",
               "OMP_NUM_THREADS": "1"}
        env.pop("PYTHONPATH", None)
        if self.code is not None:
            env["PYTHONPATH"] = str(self.code)
        args = [str(self.env.binary), f"--model-repository={self.repo}", f"--backend-directory={backends}",
                f"--cache-directory={self.env.server_root / 'caches'}", "--http-address=127.0.0.1",
                f"--http-port={self.http_port}", "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}", "--allow-gpu-metrics=false",
                "--exit-on-error=false", "--model-control-mode=none", "--exit-timeout-secs=5"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise BackendUnavailable(f"tritonserver exited before it was ready: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise BackendUnavailable(f"tritonserver not ready after {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return " | ".join(line.strip() for line in text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGINT by PID (Triton unloads its models and exits), SIGKILL if it does not in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server and its stub processes (its own session) by the server's PID."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)   # the group whose leader is our child
        self.proc.wait(30)

    def __enter__(self) -> TritonServer:
        self.start().wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
