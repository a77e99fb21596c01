"""The `odelt_sampler` Triton model: the numpy runtime and planner, network calls through BLS.

Copied as `odelt_sampler/1/model.py` by odelt.serving.repository; the Python-backend environment
needs `odelt-export` installed (no torch: the runtime is numpy-only). One request:

    inputs      n (INT32 [1]), seed (INT64 [1]), labels (INT32 [n], optional: i % classes),
                guidance (FP32 [1], optional: the guidance scale)
    parameters  budget_ms (the planner picks the best plan predicted to fit, as `odelt-export
                generate --budget-ms`), or schedule (KIND[:SOLVER[:STEPS]], a built-in name, or a
                schedule of the bundle by name)
    outputs     images (FP32 [n, C, H, W]), plan (the plan's or schedule's name), predicted_ms
                (NaN without a budget), measured_ms (the sampling wall time in this model)

A latent bundle's sampler decodes its samples with the request's decoder (the bundle's default,
or request parameter `decoder` = sd | taesd): through the decoder stage's graph model in the BLS
mode, in this process after the engine in the engine mode (odelt.serving.decoding). Images are
pixels (not clamped), measured_ms includes the decode, and a budget's plan counts it.

Noise and labels follow the runtime's convention (odelt.runtime.sampler), so a request returns the
images `odelt-export generate -n N --batch N --seed S` makes with the same plan. The runtime's own
Sampler and solvers step over `bls_backend`: the runtime's ChainBackend (the one chain runner)
whose run_graph, `BlsGraphs`, sends each graph of a step's chain as a BLS request to that graph's
model, so Triton's dynamic batcher merges the step calls of all requests in flight (one sampler
instance runs one request; instances run side by side). The decoder stage goes the same way.
Bad requests come back as a Triton error carrying the one-line OdeltError message.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from odelt import validate
from odelt.errors import ConfigError, OdeltError, RuntimeFailure, first_line
from odelt.bundle.bundle import Bundle, open_bundle
from odelt.bundle.iospec import GraphSpec
from odelt.runtime.backends.graphs import ChainBackend
from odelt.ode.heuristics import resolve_schedule
from odelt.runtime.budget.planner import choose
from odelt.runtime.budget.predict import DEFAULT_QUANTILE, Predictor
from odelt.runtime.budget.plans import load_candidates, load_plan_schedule, schedule_path
from odelt.runtime.sampler import Sampler, guidance_rows, make_labels, make_noise
from odelt.ode.schedule import Schedule, load_schedule
from odelt.serving.wire import batched, wire_shape

# (model name, inputs, output names) -> outputs: one network call, however it is carried
Call = Callable[[str, dict[str, np.ndarray], list[str]], Mapping[str, np.ndarray]]


class BlsGraphs:
    """A `run_graph` over graph models (odelt.runtime.backends.graphs.ChainBackend runs the chain):
    each graph one `call`, a BLS request inside Triton, its tensors in the shapes the graph model
    takes (a per-row scalar travels as (rows, 1) to a batched model)."""

    def __init__(self, manifest: Bundle, models: dict[str, str], call: Call):
        self.manifest, self.models, self.call = manifest, models, call
        self._batched = {name: batched(manifest.graph(name)) for name in models}

    def __call__(self, graph: GraphSpec, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        is_batched = self._batched[graph.name]
        rows = int(inputs[graph.inputs[0].name].shape[0])
        wire = {t.name: np.array(inputs[t.name], dtype=t.dtype).reshape(wire_shape(t, rows, is_batched))
                for t in graph.inputs}
        return self.call(self.models[graph.name], wire, [t.name for t in graph.outputs])


def bls_backend(manifest: Bundle, layout: str, models: dict[str, str], call: Call) -> ChainBackend:
    """The runtime's Backend protocol over graph models: the one chain runner with a BLS run_graph."""
    return ChainBackend(manifest, BlsGraphs(manifest, models, call), layout)


@dataclass(frozen=True)
class Prepared:
    """A checked request: its labels, decoder (latent bundles), plan (name, schedule key) and schedule."""
    y: np.ndarray
    decoder: Any
    key: tuple[str, str]
    schedule: Schedule
    predicted_ms: float


class SamplerService:
    """Requests -> images with one backend; keeps one Sampler per (schedule, guidance). With
    backend None (the engine mode) it only checks and plans requests (`prepare`)."""

    def __init__(self, manifest: Bundle, backend: ChainBackend | None, precision: str, max_images: int,
                 decoder: str | None = None, profile_backend: str = "ort"):
        self.manifest, self.backend, self.precision, self.max_images = manifest, backend, precision, max_images
        self.config = manifest.config             # parsed once (the manifest builds it on every read)
        self.decoder = decoder or None            # the default decoder kind of a latent bundle
        self.profile_backend = profile_backend    # the runtime backend whose profile the plans come from
        self._samplers: dict[tuple[str, float | None], Sampler] = {}
        self._planning: dict[str | None, tuple[Any, ...]] = {}
        # Built once, not per request: a Predictor memoizes its per-call costs (quantiles over the
        # profile's samples) and a plan's schedule is a file read; both cost more than the engine's
        # share of a small request.
        self._predictors: dict[tuple[Any, ...], Predictor] = {}
        self._schedules: dict[tuple[str, str], Schedule] = {}

    def handle(self, n: int, seed: int, labels: np.ndarray | None, guidance: float | None,
               params: Mapping[str, Any]) -> dict[str, Any]:
        req = self.prepare(n, seed, labels, guidance, params)
        assert self.backend is not None, "the engine mode submits prepared requests to its engine instead"
        sampler = self._sampler(req.key, req.schedule, guidance)
        cfg = self.config
        start = time.perf_counter()
        images, _ = sampler.sample(make_noise(seed, n, (cfg.in_channels, cfg.input_size, cfg.input_size)), req.y)
        if req.decoder is not None:
            decode = self.manifest.graph(req.decoder.graph)
            images = self.backend.run_graph(decode, {"latent": images})["image"]
        return {"images": images, "plan": req.key[0], "predicted_ms": req.predicted_ms,
                "measured_ms": 1e3 * (time.perf_counter() - start)}

    def prepare(self, n: int, seed: int, labels: np.ndarray | None, guidance: float | None,
                params: Mapping[str, Any]) -> Prepared:
        """A request checked and planned (its one-line error otherwise): labels, decoder, plan."""
        cfg = self.config
        if not 1 <= n <= self.max_images:
            raise ConfigError(f"n must be in 1..{self.max_images} images per request, found {n}")
        if guidance_rows(self.manifest, n, guidance) > self.max_images:
            raise ConfigError(f"with guidance each image takes 2 rows of a step call (this bundle mixes them on "
                              f"the host): n must be <= {self.max_images // 2}, found {n}")
        y = make_labels(n, cfg.num_classes) if labels is None else self._labels(labels, n)
        decoder = self._decoder(params)
        key, schedule, predicted = self._plan(params, n, decoder)
        return Prepared(y, decoder, key, schedule, predicted)

    def _decoder(self, params: Mapping[str, Any]) -> Any:
        """The decoder stage a request runs (None for a pixel-space bundle)."""
        if not self.decoder:
            if "decoder" in params:
                raise ConfigError(f"this bundle has no decoder stage; expected no decoder parameter, found "
                                  f"{params['decoder']!r}")
            return None
        default = self.manifest.decoder(self.decoder)
        chosen = self.manifest.decoder(str(params.get("decoder", self.decoder)))
        if chosen.image != default.image:
            raise ConfigError(f"decoder {chosen.kind} makes {chosen.image} images; this model's output is "
                              f"{default.image} (the {default.kind} decoder's)")
        return chosen

    def _labels(self, labels: np.ndarray, n: int) -> np.ndarray:
        y = np.asarray(labels).reshape(-1).astype(np.int64)
        null = self.manifest.null_class
        if y.shape[0] != n:
            raise ConfigError(f"labels must have n={n} entries, found {y.shape[0]}")
        bad = [int(v) for v in y if not (0 <= v < self.config.num_classes or v == null)]
        if bad:
            raise ConfigError(f"unknown class {bad[0]}: expected 0..{self.config.num_classes - 1} "
                              f"or {null} (unconditional)")
        return y.astype(np.int32)

    def _plan(self, params: Mapping[str, Any], n: int, decoder: Any = None) -> tuple[tuple[str, str], Schedule, float]:
        if "budget_ms" in params:
            budget = validate.positive("budget_ms", params["budget_ms"])
            candidates, profile = self._planner(decoder)
            quantile = validate.quantile("quantile", params.get("quantile", DEFAULT_QUANTILE))
            predictor = _memo(self._predictors, (decoder and decoder.kind, n, quantile),
                              lambda: Predictor(profile, n, quantile))
            choice = choose(candidates, budget, predictor)
            c = choice.candidate
            schedule = _memo(self._schedules, ("plan", c.schedule), lambda: load_plan_schedule(self.manifest, c))
            return (c.name, c.schedule), schedule, choice.predicted_ms
        spec = params.get("schedule")
        if not isinstance(spec, str) or not spec:
            raise ConfigError("expected request parameter budget_ms (milliseconds) or schedule (NAME), found neither")
        if "/" in spec or spec.endswith(".json"):
            raise ConfigError(f"schedule must be a name (KIND[:SOLVER[:STEPS]], built-in or the bundle's), found {spec!r}")
        return (spec, spec), _memo(self._schedules, ("spec", spec), lambda: self._named(spec)), math.nan

    def _named(self, spec: str) -> Schedule:
        own = schedule_path(self.manifest, spec)
        return load_schedule(own) if own.is_file() else resolve_schedule(spec, max(self.manifest.lengths))

    def _planner(self, decoder: Any = None) -> tuple[Any, ...]:
        """(candidates, profile) of the service's precision, read once per decoder kind: a latent
        bundle's plans count the decode the request runs (that kind, at the precision of the
        repository's decoder model), so the budget bounds the whole request."""
        key = decoder.kind if decoder is not None else None
        if key not in self._planning:
            from odelt.runtime.budget.axes import across_backends
            from odelt.runtime.budget.profile import decoder_precision_for, load_profile

            if decoder is None:
                candidates = load_candidates(self.manifest, decode=False)
            else:
                wanted = decoder_precision_for(self.manifest, decoder.kind, self.precision)
                candidates = [c for c in load_candidates(self.manifest, decode=True, decoders=(decoder.kind,))
                              if c.decoder_precision == wanted]
            profile = load_profile(self.manifest, backend=self.profile_backend)
            # the plans as `generate` names them on this backend (OpenVINO's: "@openvino", and its guarded bf16 rows)
            candidates = [c for c in across_backends(candidates, {self.profile_backend: profile}, self.manifest)
                          if c.precision == self.precision]
            if not candidates:
                raise ConfigError(f"the bundle's quality table has no {self.precision} plans"
                                  + (f" decoding with {decoder.kind}" if decoder is not None else ""))
            self._planning[key] = (candidates, profile)
        return self._planning[key]

    def _sampler(self, key: tuple[str, str], schedule: Schedule, guidance: float | None) -> Sampler:
        k = (key[1], guidance)
        if k not in self._samplers:
            self._samplers[k] = Sampler(self.backend, self.manifest, schedule, guidance)
        return self._samplers[k]


MEMO_MAX = 256      # entries per cache: keys come from requests (n, quantile, schedule names)


def _memo(store: dict, key: Any, make: Callable[[], Any]) -> Any:
    """store[key], made on first use; a full store starts over (clients choose the keys)."""
    if key not in store:
        if len(store) >= MEMO_MAX:
            store.clear()
        store[key] = make()
    return store[key]


def open_service(bundle: Path, params: Mapping[str, str], call: Call) -> SamplerService:
    """The service the model config describes (`parameters` of odelt_sampler/config.pbtxt)."""
    # The graph files its records list live in their own models, not beside this copy.
    manifest = open_bundle(bundle, check_files=False)
    backend = bls_backend(manifest, params["layout"], json.loads(params["graph_models"]), call)
    return SamplerService(manifest, backend, params["precision"], int(params["max_images"]),
                          params.get("decoder") or None, params.get("profile_backend") or "ort")


def one_line(e: BaseException) -> str:
    if isinstance(e, OdeltError):
        return str(e)
    return f"internal error in odelt_sampler: {type(e).__name__}: {first_line(e)}"


# -- inside Triton -----------------------------------------------------------------------------

def bls_call(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    import triton_python_backend_utils as pb_utils

    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=outputs,
                                        inputs=[pb_utils.Tensor(k, v) for k, v in inputs.items()])
    response = request.exec()
    if response.has_error():
        raise RuntimeFailure(f"graph model {model} failed: {response.error().message()}")
    return {name: np.array(pb_utils.get_output_tensor_by_name(response, name).as_numpy()) for name in outputs}


class TritonPythonModel:
    """mode "bls" (default): one request per execute, its steps through the graph models; mode
    "engine" (a decoupled model): execute hands requests to the in-process engine and returns at
    once, the engine's thread sends each response when its request leaves."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = Path(args["model_repository"]) / args["model_version"]
        self.engine = None
        if params.get("mode", "bls") == "engine":
            from odelt.serving.engine_model import open_engine_service

            self.engine = open_engine_service(here / "bundle", params, lambda manifest: SamplerService(
                manifest, None, params["precision"], int(params["max_images"]), params.get("decoder") or None,
                profile_backend=params.get("profile_backend") or params.get("backend") or "ort"))
            self.service = self.engine.service
        else:
            self.service = open_service(here / "bundle", params, bls_call)

    def finalize(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def execute(self, requests: list[Any]) -> list[Any] | None:
        if self.engine is None:
            return [self._one(r) for r in requests]
        for r in requests:
            self._submit(r)
        return None

    def _one(self, request: Any) -> Any:
        import triton_python_backend_utils as pb_utils

        try:
            out = self.service.handle(*_request_args(request))
        except Exception as e:  # noqa: BLE001 - one line back to the client; the model keeps serving
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(one_line(e)))
        return _response(out)

    def _submit(self, request: Any) -> None:
        import triton_python_backend_utils as pb_utils

        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

        def reply(out: dict[str, Any] | None, error: BaseException | None) -> None:
            if error is not None:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(one_line(error))), flags=final)
            else:
                sender.send(_response(out), flags=final)

        probe = getattr(sender, "is_cancelled", None)        # the client went away (Triton >= 23.10)
        try:
            assert self.engine is not None
            self.engine.submit(*_request_args(request), reply, (lambda: not probe()) if probe else None)
        except Exception as e:  # noqa: BLE001 - a bad request gets its line; the others go on
            reply(None, e)


def _request_args(request: Any) -> tuple[int, int, np.ndarray | None, float | None, dict[str, Any]]:
    """(n, seed, labels, guidance, parameters) of a Triton request."""
    import triton_python_backend_utils as pb_utils

    def value(name: str) -> np.ndarray | None:
        t = pb_utils.get_input_tensor_by_name(request, name)
        return None if t is None else t.as_numpy()

    def scalar(name: str) -> Any:
        a = value(name)
        return None if a is None else a.reshape(-1)[0].item()     # exact: int64 seeds stay ints

    params = json.loads(request.parameters() or "{}")
    n, seed = int(scalar("n") or 0), int(scalar("seed") or 0)      # required inputs: Triton checks them
    guidance = scalar("guidance")
    labels = value("labels")
    return n, seed, None if labels is None else np.array(labels), None if guidance is None else float(guidance), params


def _response(out: dict[str, Any]) -> Any:
    import triton_python_backend_utils as pb_utils

    tensors = [pb_utils.Tensor("images", np.ascontiguousarray(out["images"], np.float32)),
               pb_utils.Tensor("plan", np.array([out["plan"].encode()], dtype=np.object_)),
               pb_utils.Tensor("predicted_ms", np.array([out["predicted_ms"]], np.float32)),
               pb_utils.Tensor("measured_ms", np.array([out["measured_ms"]], np.float32)),
               pb_utils.Tensor("stats", np.array([json.dumps(out.get("stats", {})).encode()], dtype=np.object_))]
    return pb_utils.InferenceResponse(output_tensors=tensors)

