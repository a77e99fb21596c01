"""Serving on Triton Inference Server: a model repository from any bundle, and the sampler model.

    repository.py     bundle -> REPO/ (one model per graph + the `odelt_sampler` model), config.pbtxt
    wire.py           model names and the shapes tensors travel with (shared by writer and sampler)
    pbtxt.py          protobuf text rendering of a config dict
    graph_model.py    the `cpu` flavour's graph model: Python backend running one graph with ORT
    sampler_model.py  the `odelt_sampler` model: the numpy runtime and planner, steps via BLS
    engine_model.py   its engine mode: every request in one in-process batching engine, an outbox
    decoding.py       the engine mode's decode thread (latent bundles)
    server.py         start/stop a real `tritonserver` (the one inside the nvidia-pytriton wheel)
    client.py         a small KServe-v2 HTTP/JSON client (no tritonclient needed)
    validate.py       check config.pbtxt files against Triton's schema (needs tritonclient)

Nothing here imports torch; Triton's own modules are imported only inside the server.
"""

from odelt.lazy import face

__all__, __getattr__, __dir__ = face(__name__, {
    "odelt.serving.repository": ("RepoOptions", "write_repository", "ENGINES"),
    "odelt.serving.server": ("TritonServer", "find_env"),
    "odelt.serving.client": ("Client", "ServingError"),
    "odelt.serving.engine_model": ("EngineService", "open_engine_service"),
    "odelt.serving.sampler_model": ("SamplerService",),
})
