"""Run in the serving environment (it has tritonclient): open a gRPC stream to odelt_sampler, send
`count` long requests on it, cancel the stream after `after_s`, print what the stream's callback got.

    python grpc_cancel.py HOST:GRPC_PORT COUNT STEPS AFTER_S
"""

from __future__ import annotations

import json
import queue
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient


def main(url: str, count: int, steps: int, after_s: float) -> None:
    client = grpcclient.InferenceServerClient(url)
    got: queue.SimpleQueue = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: got.put("error" if error is not None else "result"))
    for i in range(count):
        n = grpcclient.InferInput("n", [1], "INT32")
        n.set_data_from_numpy(np.array([4], np.int32))
        seed = grpcclient.InferInput("seed", [1], "INT64")
        seed.set_data_from_numpy(np.array([i], np.int64))
        client.async_stream_infer("odelt_sampler", [n, seed], parameters={"schedule": f"uniform:euler:{steps}"})
    time.sleep(after_s)
    client.stop_stream(cancel_requests=True)
    client.close()
    answers = []
    while not got.empty():
        answers.append(got.get())
    print(json.dumps({"answers": answers}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
