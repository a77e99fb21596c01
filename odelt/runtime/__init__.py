"""The runtime: numpy-only ODE time stepping over exported bundles (ONNX Runtime, TensorRT).

Never imports torch (tested): a device needs numpy and one backend. Heavy backend libraries are
imported only when a backend is opened, and every name below loads its module on first use.

    backends/   the Backend protocol, the registry (`open_backend`), ORT, TensorRT, decoders, ChainBackend
    sampler.py  `Sampler`: one schedule through a backend; `make_noise`, `make_labels`
    budget/     latency profiles, the quantile predictor, the chooser, the tracker, anytime control, streams
    generate.py `generate_from_bundle`: the `generate` command as a function
"""

from odelt.lazy import face

__all__, __getattr__, __dir__ = face(__name__, {
    "odelt.ode.solvers": ("SOLVERS", "SOLVER_INFO", "nfe_for"),
    "odelt.ode.schedule": ("Schedule", "load_schedule", "save_schedule"),
    "odelt.ode.heuristics": ("heuristic_schedule", "make_grid", "resolve_schedule"),
    "odelt.runtime.backends": ("BACKENDS", "Backend", "BackendOptions", "open_backend", "check_batch"),
    "odelt.runtime.backends.graphs": ("ChainBackend",),
    "odelt.runtime.backends.decoder": ("OrtDecoder", "open_decoder"),
    "odelt.runtime.sampler": ("Sampler", "Stats", "Tables", "make_noise", "make_labels", "generate_batches"),
    "odelt.runtime.images": ("grid_image", "save_png", "save_npy", "to_uint8"),
    "odelt.runtime.reference": ("torch_sample",),
    "odelt.runtime.budget.profile": ("profile_bundle", "save_profile", "load_profile", "call_cost", "decode_cost",
                                     "step_feeds", "host_overheads", "check_plan_batch",
                                     "device_description"),
    "odelt.runtime.budget.predict": ("Predictor", "QuantilePredictor", "DEFAULT_QUANTILE", "MEDIAN", "predict_now"),
    "odelt.runtime.budget.planner": ("Candidate", "Choice", "choose", "pareto_front", "prediction_record"),
    "odelt.runtime.budget.plans": ("load_candidates", "load_plan_schedule", "PlanBook"),
    "odelt.runtime.budget.tracker": ("SpeedTracker", "Replanner"),
    "odelt.runtime.budget.anytime": ("Deadline",),
    "odelt.runtime.budget.stream": ("Stream", "StreamStats", "stream_for_bundle", "generate_stream"),
    "odelt.runtime.engine": ("Engine", "EngineOptions", "Job"),
    "odelt.runtime.generate": ("GenerateOptions", "GenerateResult", "generate_from_bundle", "log_records"),
})
