"""Serving fixtures: a tiny bundle, its `cpu` repository, and a real tritonserver on 127.0.0.1.

The server comes from the serving environment (`make serve-env`, .venv-serve); where it cannot
run (glibc < 2.35, no stub for that Python, the environment missing) those tests skip with the
reason. One server serves a whole module and is stopped by its PID afterwards.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.serving.helpers import make_serving_bundle


@pytest.fixture(scope="session")
def serve_bundle(tmp_path_factory):
    return make_serving_bundle(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="session")
def serving_env():
    from odelt.errors import BackendUnavailable
    from odelt.serving.server import find_env

    try:
        return find_env()
    except BackendUnavailable as e:
        pytest.skip(f"tritonserver cannot run here: {e}")


@pytest.fixture(scope="session")
def cpu_repo(serve_bundle, tmp_path_factory):
    from odelt.serving.repository import RepoOptions, write_repository

    return write_repository(serve_bundle, tmp_path_factory.mktemp("repo") / "cpu", RepoOptions(engines="cpu", sampler="bls"))


@pytest.fixture(scope="session")
def engine_repo(serve_bundle, tmp_path_factory):
    from odelt.serving.repository import RepoOptions, write_repository

    return write_repository(serve_bundle, tmp_path_factory.mktemp("repo") / "engine", RepoOptions(sampler="engine"))


def checkout():
    """This checkout: the server's models import its odelt (the serving environment may hold another)."""
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def running_server(env, repo, work):
    """A tritonserver on `repo`, ready, stopped when the generator is closed (a module fixture's body:
    `yield from running_server(...)`)."""
    from odelt.serving.server import TritonServer

    s = TritonServer(env, repo, work, code=checkout())
    try:
        s.start().wait_ready(180)
        yield s
    finally:
        s.stop()


def validate(env, repo) -> subprocess.CompletedProcess:
    """Triton's schema check, run in the serving environment (it has tritonclient)."""
    return subprocess.run([str(env.venv / "bin" / "python"), "-m", "odelt.serving.validate", str(repo)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def server(serving_env, cpu_repo, tmp_path_factory):
    yield from running_server(serving_env, cpu_repo, tmp_path_factory.mktemp("triton"))
