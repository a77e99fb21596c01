"""Triton Python-backend model of the `cpu` repository flavour: one bundle graph run by ONNX Runtime.

Copied as `<model>/1/model.py` by odelt.serving.repository; it imports only numpy, onnxruntime and
Triton's `triton_python_backend_utils`, so it runs in any Python-backend environment. It stands in
for Triton's onnxruntime backend, which the pip-installable tritonserver lacks: same model names,
inputs and outputs as the `onnxruntime` and `tensorrt` flavours.

Triton's dynamic batcher hands `execute` every request it gathered: their rows are concatenated,
run as one ONNX Runtime call, and split back per request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = Path(args["model_repository"]) / args["model_version"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("intra_op_threads", "1"))   # one core per instance
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(here / params["graph_file"]), so,
                                            providers=["CPUExecutionProvider"])
        self.batched = json.loads(params.get("batched", "true"))
        self.row_shapes = {k: tuple(v) for k, v in json.loads(params.get("row_shapes", "{}")).items()}
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def _feed(self, request: Any, name: str) -> np.ndarray:
        import triton_python_backend_utils as pb_utils

        a = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
        return a.reshape((a.shape[0], *self.row_shapes[name])) if self.batched else a

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        try:
            per_request = [{n: self._feed(r, n) for n in self.inputs} for r in requests]
            if not self.batched:
                results = [self.session.run(self.outputs, f) for f in per_request]
            else:
                sizes = [f[self.inputs[0]].shape[0] for f in per_request]
                feeds = {n: np.concatenate([f[n] for f in per_request]) for n in self.inputs}
                outs = self.session.run(self.outputs, feeds)
                bounds = np.cumsum([0, *sizes])
                results = [[o[lo:hi] for o in outs] for lo, hi in zip(bounds[:-1], bounds[1:])]
        except Exception as e:  # noqa: BLE001 - every request gets the one-line reason
            message = f"graph model: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message)) for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(o))
                                                           for n, o in zip(self.outputs, res)])
                for res in results]
