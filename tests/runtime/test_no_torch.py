"""odelt.runtime must work on a device without torch: import it in a subprocess where
`import torch` fails, then run a solver and a schedule."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCKER = textwrap.dedent("""
    import sys

    class _NoTorch:
        # A meta-path finder that refuses torch (and anything under it), as on a bare device.
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)")
            return None

    sys.meta_path.insert(0, _NoTorch())
""")


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    script = BLOCKER + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_blocker_really_blocks_torch():
    r = run_without_torch("import torch")
    assert r.returncode != 0 and "blocked for this test" in r.stderr


def test_runtime_imports_and_integrates_without_torch():
    r = run_without_torch("""
        import numpy as np
        import odelt.runtime as rt
        from odelt.runtime import backends, sampler, generate, images  # noqa: F401
        from odelt.runtime.backends import ort, tensorrt  # noqa: F401
        from odelt.runtime.budget import stream, anytime  # noqa: F401
        s = rt.resolve_schedule("uniform:heun:8", length=4)
        x = np.ones((2, 1, 4, 4), np.float32)
        out = rt.SOLVERS[s.solver](lambda x, t, n: -x, x, list(s.t_grid), **s.solver_kwargs())
        assert out.dtype == np.float32 and abs(float(out.mean()) - np.exp(-1)) < 1e-2, out.mean()
        assert "torch" not in sys.modules
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_generate_from_a_bundle_without_torch(tiny_bundle, tmp_path):
    r = run_without_torch(f"""
        from odelt.runtime.generate import GenerateOptions, generate_from_bundle
        from odelt.runtime.images import grid_image, save_png
        res = generate_from_bundle({str(tiny_bundle.root)!r}, GenerateOptions(schedule="cosine:dpmpp_2m:4", n=3, batch=2))
        save_png(grid_image(res.images), {str(tmp_path / "g.png")!r})
        assert res.images.shape == (3, 1, 8, 8) and res.stats.calls == 8
        assert "torch" not in sys.modules
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_latent_bundle_decodes_without_torch(tmp_path):
    from tests.latent.vae_files import export_latent_bundle

    bundle = export_latent_bundle(tmp_path / "latent", kinds=("taesd",))
    r = run_without_torch(f"""
        from odelt.runtime.generate import GenerateOptions, generate_from_bundle
        from odelt.runtime.backends.decoder import latent_from_nhwc
        res = generate_from_bundle({str(bundle.root)!r}, GenerateOptions(schedule="uniform:euler:2", n=2, batch=2))
        assert res.images.shape == (2, 3, 16, 16) and res.latents.shape == (2, 4, 8, 8), res.images.shape
        assert res.decoded.kind == "taesd"
        assert latent_from_nhwc(res.latents.transpose(0, 2, 3, 1)).shape == (2, 4, 8, 8)
        assert "torch" not in sys.modules
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_every_name_on_the_runtime_face_loads_without_torch():
    r = run_without_torch("""
        import odelt.runtime as rt
        for name in rt.__all__:            # torch_sample too: it imports torch when called, not before
            assert getattr(rt, name) is not None, name
        assert "torch" not in sys.modules
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
