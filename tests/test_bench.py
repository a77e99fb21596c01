"""The benchmarks cannot rot unseen: `bench/run.py --smoke` runs every group on tiny sizes (a group
that raises fails here), and every key it writes is documented in bench/README.md's key lists (a
renamed figure must update the docs in the same commit)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
bench_run = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_run)


def documented_keys(text: str) -> list[re.Pattern]:
    """The key patterns of bench/README.md: the first word of each line in its ```keys blocks.
    `<name>` stands for any run of characters, `{a,b}` for either word; the rest is literal."""
    patterns = []
    for block in re.findall(r"```keys\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            if line.strip():
                patterns.append(_pattern(line.split()[0]))
    return patterns


def _pattern(key: str) -> re.Pattern:
    out, i = "", 0
    for m in re.finditer(r"<[^>]+>|\{[^}]+\}", key):
        out += re.escape(key[i:m.start()])
        token = m.group()
        out += ".+?" if token.startswith("<") else "(?:" + "|".join(map(re.escape, token[1:-1].split(","))) + ")"
        i = m.end()
    return re.compile(out + re.escape(key[i:]))


def undocumented(keys, patterns) -> list[str]:
    return sorted(k for k in keys if not any(p.fullmatch(k) for p in patterns))


def test_key_patterns_match_what_they_say():
    pats = documented_keys("```keys\nlatent_decode_{sd,taesd}_ms_<stat>  the decode time\nbench_cpus  cores\n```\n")
    assert undocumented(["latent_decode_sd_ms_median", "latent_decode_taesd_ms_min", "bench_cpus"], pats) == []
    assert undocumented(["latent_decode_vq_ms_min", "bench_cpus_x", "latent_decode_sd_ms_"], pats) == \
        ["bench_cpus_x", "latent_decode_sd_ms_", "latent_decode_vq_ms_min"]


def test_a_group_without_a_smoke_setting_is_an_error(monkeypatch):
    old = types.ModuleType("old_group")
    old.run = lambda quick=False: {"old_figure": 1}
    monkeypatch.setitem(sys.modules, "old_group", old)
    monkeypatch.setitem(bench_run.GROUPS, "old", "old_group")
    figures, _, error = bench_run.run_group("old", quick=False, smoke=True)
    assert figures == {} and error == "TypeError: group old has no smoke setting: expected run(quick, smoke) " \
                                      "in bench/old_group.py"
    new = types.ModuleType("new_group")
    new.run = lambda quick=False, smoke=False: {"new_smoke": smoke, "new_quick": quick}
    monkeypatch.setitem(sys.modules, "new_group", new)
    monkeypatch.setitem(bench_run.GROUPS, "new", "new_group")
    assert bench_run.run_group("new", quick=False, smoke=True)[0] == {"new_smoke": True, "new_quick": True}


@pytest.fixture(scope="module")
def smoke(request, tmp_path_factory):
    """The smoke run's (returncode, its output) and figures: the run tests/conftest.py started at
    collection, or one started here (a test selected after collection)."""
    from tests.conftest import SMOKE_KEY, start_smoke

    started = request.config.stash.get(SMOKE_KEY, None)
    proc, out, log = started if started is not None else start_smoke(tmp_path_factory.mktemp("bench"))
    try:
        proc.wait(timeout=3600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return (proc.returncode, log.read_text()), (json.loads(out.read_text()) if out.is_file() else {})


@pytest.mark.integration
def test_every_group_runs_in_the_smoke_setting(smoke):
    (returncode, stderr), figures = smoke
    errors = {k: v for k, v in figures.items() if k.startswith("bench_error_")}
    assert returncode == 0 and errors == {}, errors or stderr[-3000:]
    assert {f"bench_seconds_{g}" for g in bench_run.GROUPS} <= set(figures) and figures["bench_smoke"] is True
    assert figures["bench_cpu_isa"], "the CPU's instruction sets are recorded"


@pytest.mark.integration
def test_every_key_a_smoke_run_writes_is_documented(smoke):
    _, figures = smoke
    assert figures, "the smoke run wrote no figures"
    assert undocumented(figures, documented_keys((ROOT / "bench" / "README.md").read_text())) == []
