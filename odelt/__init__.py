"""odelt-export: ODE_t(ODE_l) flow transformers to ONNX, ONNX Runtime and TensorRT.

The verbs of every stage, one import away (each loads its package on first use, so `import odelt`
stays light)::

    import odelt
    odelt.export_source("builtin:digits", odelt.ExportOptions(out="b"))
    bundle = odelt.open_bundle("b")
    odelt.quantize_bundle(...); odelt.build_bundle(...); odelt.profile_bundle(...)
    result = odelt.generate_from_bundle("b", odelt.GenerateOptions(n=8))
"""

from odelt.errors import OdeltError  # noqa: F401  (eager: no dependencies)
from odelt.lazy import face

__version__ = "0.1.0"
__all__, __getattr__, __dir__ = face(__name__, {
    "odelt.exporter.export": ("ExportOptions", "export_source", "export_bundle"),
    "odelt.exporter.verify": ("VerifyOptions", "verify_bundle"),
    "odelt.bundle.bundle": ("Bundle", "open_bundle"),
    "odelt.calibration.quantize": ("QuantizeOptions", "quantize_bundle"),
    "odelt.engines.build": ("BuildRequest", "build_bundle"),
    "odelt.runtime.budget.profile": ("profile_bundle", "load_profile", "save_profile"),
    "odelt.runtime.budget.plans": ("load_candidates",),
    "odelt.runtime.budget.planner": ("choose",),
    "odelt.runtime.generate": ("GenerateOptions", "generate_from_bundle", "generate=generate_from_bundle"),
    "odelt.runtime.sampler": ("Sampler",),
    "odelt.ode.heuristics": ("resolve_schedule",),
    "odelt.ode.schedule": ("Schedule",),
    "odelt.schedules.quality": ("write_quality",),
    "odelt.serving.repository": ("RepoOptions", "write_repository"),
    "odelt.pipeline.demo": ("DemoOptions", "run_demo"),
}, eager=("OdeltError",))
