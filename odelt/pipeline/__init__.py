"""Host-side composition of the stages: the quality table and the one-command demo."""

from odelt.lazy import face

__all__, __getattr__, __dir__ = face(__name__, {
    "odelt.pipeline.demo": ("DemoOptions", "DemoResult", "run_demo", "stage_export", "stage_quantize",
                            "stage_schedules", "stage_build", "stage_quality", "stage_profile", "measure_plan"),
    "odelt.pipeline.interference": ("pick_budget", "run_modes", "run_front", "prepare_held_out=prepare",
                                     "hindsight_best", "loaded_figures"),
})
