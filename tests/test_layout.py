"""The floor plan: every odelt module imports only from its own floor or below, the import graph
(lazy, function-level imports included) has no circles, and bench/ uses only public names.

Floors, lowest first. A package's sub-floors (runtime: backends < sampler < budget < generate) are
checked the same way. The faces (`odelt/__init__`, a package's `__init__` re-exporting its verbs
lazily) are exempt from the floor rule: they are how callers above reach the verbs."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = [
    {"errors", "validate", "fileio", "data", "lazy"},
    {"onnxrt", "ode"},
    {"models"},
    {"latent"},
    {"bundle"},
    {"exporter"},
    {"engines"},
    {"runtime"},
    {"calibration"},
    {"schedules"},
    {"serving"},
    {"pipeline"},
    {"cli"},
]
RUNTIME_FLOORS = [{"images", "reference"}, {"backends"}, {"sampler", "gather"}, {"budget"}, {"generate", "engine"}]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / "odelt").rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every odelt module `path` imports, at any depth of the file ("from odelt import validate"
    names the module odelt.validate)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "odelt":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "odelt")
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, set(mods)) - {m} for m, p in mods.items()}


def _floor(module: str, floors: list[set[str]], depth: int) -> int | None:
    parts = module.split(".")
    if len(parts) <= depth:
        return None
    return next((i for i, f in enumerate(floors) if parts[depth] in f), None)


def _is_face(module: str) -> bool:
    return (ROOT / Path(*module.split(".")) / "__init__.py").is_file()


def upward_imports() -> list[str]:
    bad = []
    for a, targets in import_graph().items():
        if a == "odelt" or _is_face(a):
            continue
        for b in targets:
            fa, fb = _floor(a, FLOORS, 1), _floor(b, FLOORS, 1)
            if fa is not None and fb is not None and fb > fa:
                bad.append(f"{a} -> {b}")
            if a.startswith("odelt.runtime.") and b.startswith("odelt.runtime."):
                ra, rb = _floor(a, RUNTIME_FLOORS, 2), _floor(b, RUNTIME_FLOORS, 2)
                if ra is not None and rb is not None and rb > ra:
                    bad.append(f"{a} -> {b}")
    return sorted(bad)


def import_circles() -> list[list[str]]:
    graph = {m: {t for t in ts if not _is_face(t)} for m, ts in import_graph().items() if not _is_face(m)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:              # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def private_reach_ins(folder: str) -> list[str]:
    """`from odelt.x import _name` in files under `folder`."""
    bad = []
    for p in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("odelt"):
                bad += [f"{p.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return bad


def _face_names(module: str) -> set[str] | None:
    """The names `module` offers bench/: a package's `__all__` (its face) or a top-level module's
    public names (odelt/errors.py, fileio.py, ...: floor-0 modules are their own faces); None for a
    submodule, which is no face."""
    import importlib

    parts = module.split(".")
    if _is_face(module):
        mod = importlib.import_module(module)
        subpackages = {p.parent.name for p in (ROOT / Path(*parts)).glob("*/__init__.py")}
        return set(getattr(mod, "__all__", ())) | subpackages
    if len(parts) == 2 and (ROOT / "odelt" / f"{parts[1]}.py").is_file():
        return {n for n in dir(importlib.import_module(module)) if not n.startswith("_")}
    return None


def bench_imports() -> list[tuple[str, str, str]]:
    """(file, module, name) for every odelt import in bench/ (name "" for `import odelt.x`)."""
    out = []
    for p in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "odelt":
                out += [(p.name, node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                out += [(p.name, a.name, "") for a in node.names if a.name.split(".")[0] == "odelt"]
    return out


def bench_off_face() -> list[str]:
    """bench/ imports that do not go through a face: a submodule path, or a name the face does not export."""
    bad = []
    for file, module, name in bench_imports():
        names = _face_names(module)
        if names is None or (name and name not in names):
            bad.append(f"{file}: {module}.{name}" if name else f"{file}: import {module}")
    return bad


def test_bench_imports_only_what_a_face_exports():
    assert bench_off_face() == []


def test_every_name_a_face_exports_resolves():
    """A face lists a name its module no longer has: caught here, not by the first caller."""
    import importlib

    missing = []
    for init in sorted((ROOT / "odelt").rglob("__init__.py")):
        module = _module_name(init)
        face = importlib.import_module(module)
        missing += [f"{module}.{n}" for n in getattr(face, "__all__", ()) if not hasattr(face, n)]
    assert missing == []


def test_importing_every_face_loads_no_heavy_library():
    """Faces load their verbs on first use: `import odelt.exporter` must not import torch or onnx."""
    import subprocess
    import sys

    faces = sorted(_module_name(p) for p in (ROOT / "odelt").rglob("__init__.py"))
    code = (f"import sys\nfor m in {faces!r}:\n    __import__(m)\n"
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'polygraphy', 'diffusers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_no_module_imports_from_a_floor_above_its_own():
    assert upward_imports() == []


def test_the_import_graph_has_no_circles():
    assert import_circles() == []


def test_no_private_name_is_imported_across_modules():
    assert private_reach_ins("odelt") == [] and private_reach_ins("bench") == [] and private_reach_ins("tests") == []


if __name__ == "__main__":
    print("upward imports:", len(upward_imports()), *upward_imports(), sep="\n  ")
    print("circles:", len(import_circles()), *import_circles(), sep="\n  ")
    off = sorted({m for _, m, _ in bench_imports() if _face_names(m) is None})
    print("bench/ imports from submodule paths:", len(off), *off, sep="\n  ")
    print("bench/ imports off a face:", len(bench_off_face()))
    for folder in ("odelt", "bench", "tests"):
        print(f"private reach-ins in {folder}:", len(private_reach_ins(folder)))
