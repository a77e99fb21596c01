"""The docs run: README.md's walk-through (a user's own model, no demo) runs command by command on
builtin:digits and builtin:digits-latent and ends in a budgeted `generate`; every `odelt-export`
command line in README.md and docs/*.md is one that a test runs (this file, or the test named in
RUN_ELSEWHERE, which must hold that subcommand and those options)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WALK_HEADING = "## Your own model, stage by stage (without the demo)"


def code_lines(text: str) -> list[str]:
    """`odelt-export ...` lines of the fenced code blocks, continuation lines joined, comments cut."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("odelt-export "):
                out.append(line)
    return out


def walkthrough() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(WALK_HEADING):]
    return code_lines(section[:section.index("\n## ", 1)])


def usage(line: str) -> tuple[str, set[str]]:
    """(subcommand, its long options) of a documented line; [--opt ...] and a|b alternatives count."""
    words = shlex.split(line.replace("[", " ").replace("]", " ").replace("...", " "))
    return words[1], {w.split("=")[0] for w in words[2:] if w.startswith("--")}


def usage_value(line: str, option: str) -> str:
    words = shlex.split(line)
    return words[words.index(option) + 1]


# Documented lines run by other tests: subcommand -> the test files that run it with those options.
RUN_ELSEWHERE = {
    "quality": ["tests/cli/test_stage_cmds.py"],
    "profile": ["tests/runtime/backends/test_openvino_plan.py", "tests/runtime/budget/test_decoder_profile_openvino.py"],
    "plan": ["tests/runtime/budget/test_profile_lookup.py"],
    "triton": ["tests/serving/test_repository.py", "tests/serving/test_openvino_server.py"],
    "tables": ["tests/cli/test_stage_cmds.py"],
    "build": ["tests/engines/test_build_cli.py"],
    "export": ["tests/exporter/test_cli.py", "tests/latent/test_train.py"],
    "verify": ["tests/exporter/test_cli.py"],
    "generate": ["tests/runtime/backends/test_decoder.py"],
    "quantize": ["tests/calibration/test_quantize.py"],
    "schedule": ["tests/schedules/test_cli.py"],
    "evaluate": ["tests/schedules/test_cli.py"],
}
TRAINING = ("train", "train-vae", "train-classifier")     # run below at tiny sizes


def training_lines() -> list[str]:
    return [line for _, line in documented() if usage(line)[0] in TRAINING]


def tiny(line: str, out: Path) -> list[str]:
    """A documented training line at smoke size: 2 steps (1 epoch), written under `out`; the
    weights folder it names becomes `out`."""
    line = re.sub(r"--steps \d+", "--steps 2", re.sub(r"--epochs \d+", "--epochs 1", line))
    line = line.replace("odelt/models/weights/", f"{out}/")
    return shlex.split(line)[1:]


@pytest.mark.integration
def test_the_documented_training_lines_run_at_smoke_size(run_cli, tmp_path):
    assert {usage(line)[0] for line in training_lines()} == set(TRAINING)
    for line in training_lines():
        res = run_cli(tiny(line, tmp_path))
        assert res.code == 0, (line, res.err[-2000:])
    assert (tmp_path / "digits_latent.safetensors").is_file() and (tmp_path / "digits.safetensors").is_file()


def test_the_walkthrough_is_the_whole_chain():
    stages = [usage(line)[0] for line in walkthrough()]
    for stage in ("export", "quantize", "schedule", "build", "profile", "quality", "plan", "generate"):
        assert stage in stages, stage
    assert stages.index("quality") < stages.index("plan") < stages.index("generate")
    assert "--budget-ms" in usage(walkthrough()[stages.index("generate")])[1]


@pytest.mark.integration
@pytest.mark.parametrize("model", ["builtin:digits", "builtin:digits-latent"])
def test_the_readme_walkthrough_runs_and_ends_in_a_budgeted_generate(model, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for line in walkthrough():
        res = run_cli(shlex.split(line.replace("MODEL", model))[1:])
        assert res.code == 0, (line, res.err[-2000:])
        outputs[usage(line)[0]] = res.out
    budget = usage_value(next(line for line in walkthrough() if usage(line)[0] == "generate"), "--budget-ms")
    assert f"for budget {budget} ms: predicted" in outputs["generate"], outputs["generate"]
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert (tmp_path / "b" / "quality.json").is_file() and (tmp_path / "repo").is_dir()


def documented() -> list[tuple[str, str]]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [(p.relative_to(ROOT).as_posix(), line) for p in pages for line in code_lines(p.read_text())]


def _runs(files: list[str], sub: str, options: set[str]) -> bool:
    """Some file of `files` runs `sub` (its name as a literal) with every one of `options` (literals)."""
    for f in files:
        text = (ROOT / f).read_text()
        if f'"{sub}"' in text and all(f'"{o}"' in text for o in options):
            return True
    return False


def test_every_documented_command_is_run_by_a_test():
    walked: dict[str, set[str]] = {}
    for line in walkthrough():
        sub, opts = usage(line)
        walked.setdefault(sub, set()).update(opts)
    missing = []
    for page, line in documented():
        sub, opts = usage(line)
        if opts <= walked.get(sub, set()) or sub in TRAINING:
            continue                                    # the walk-through or the training test runs it
        if not _runs(RUN_ELSEWHERE.get(sub, []), sub, opts - walked.get(sub, set())):
            missing.append(f"{page}: {line}")
    assert not missing, "documented but run by no test:\n" + "\n".join(missing)
