"""What a backend is: the protocol the sampler calls, the options every backend takes, and the
checks every backend applies to a call (one length per call, the batch range it serves).

A backend is opened once per bundle and used as a context manager::

    with open_backend("ort", bundle, BackendOptions(threads=1)) as be:
        out = be.infer({"x": x, "t": t, "dt_base": d, "y": y, "l": l})   # -> {"velocity": (B,C,H,W)}

`infer` runs the whole chain for the length in feeds["l"] (uniform over the batch): the
conditioning graph (skipped when feeds carry precomputed modulations from a table), the chunks up
to the length's exit, the head; or the single per-length graph. The returned arrays are views of
reused buffers, valid until the next call: copy what you keep.

Exits inside a call (optional): a backend that can stop a segments chain early has
`exits(length) -> (exit lengths, ascending)` and takes `infer(feeds, after_segment)`, asking
`after_segment(exit length)` after each chunk that completes one; True runs the head there on the
velocity sum so far (odelt.bundle.chain.chain_exits). Backends without `exits` are called as above.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from odelt import validate
from odelt.errors import ConfigError, RuntimeFailure
from odelt.bundle.bundle import Bundle
from odelt.bundle.iospec import GraphSpec


@dataclass(frozen=True)
class BackendOptions:
    """Everything a backend is opened with; each backend reads the fields that apply to it."""

    layout: str | None = None                  # None: the bundle's default (segments when exported)
    lengths: tuple[int, ...] | None = None     # lengths to serve; None: every exported length
    precision: str = "fp32"                    # the precision variant (ORT graphs, TensorRT engine set)
    threads: int = 0                           # ONNX Runtime intra-op threads; 0: its default
    use_engines: bool = True                   # ONNX Runtime: open built engines when the bundle has them
    engine_set: str | None = None              # TensorRT: this engine set instead of the precision's
    providers: tuple[str, ...] | None = None   # ONNX Runtime providers; None: CUDA when installed, then CPU
    spinning: bool | None = None               # ONNX Runtime pools spin; None: only for a single session
    shared_arena: bool = True                  # ONNX Runtime CPU: one arena for every session
    naive: bool = False                        # ONNX Runtime: session.run with fresh feeds (the baseline)
    cuda_graphs: bool = False                  # TensorRT: capture one CUDA graph per (length, batch)

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0: the backend's default), found {self.threads}")
        if self.lengths is not None:
            object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))


class Backend(Protocol):
    """What the sampler needs from a backend."""

    name: str
    layout: str
    lengths: tuple[int, ...]

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...

    def infer(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]: ...


def chain_length(feeds: Mapping[str, np.ndarray], lengths: tuple[int, ...]) -> int:
    """The one length a call runs at (the runtime never mixes lengths inside a batch)."""
    ls = feeds["l"]
    length = int(ls[0])
    if len(ls) > 1 and ls.min() != ls.max():
        raise RuntimeFailure(f"one length per call expected, found lengths {sorted(set(ls.tolist()))}")
    if length not in lengths:
        raise RuntimeFailure(f"length {length} is not offered by this bundle; expected one of {list(lengths)}")
    return length


def skip_graph(graph: GraphSpec, feeds: Mapping[str, Any]) -> bool:
    """A conditioning graph whose outputs came with the feeds (a modulation table) is not run."""
    return graph.kind == "conditioning" and all(t.name in feeds for t in graph.outputs)


def check_batch(manifest: Bundle, batch: int, profile_bound: bool) -> None:
    """Engines with optimisation profiles serve only the manifest's batch range (rows double with
    host-side guidance). Graphs run by ONNX Runtime take any batch."""
    validate.count("--batch", batch)
    rng = manifest.batch
    if profile_bound and not rng.min <= batch <= rng.max:
        raise ConfigError(f"batch {batch} is outside the engines' profile {rng.min}..{rng.max} "
                          f"(export with --batch MIN:OPT:MAX to change it)")


def decode_batches(decoder: Any, latents: np.ndarray, batch: int | None,
                   run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Every decoder's `decode`: (N, C, h, w) latents -> (N, C_img, H, W) float32 images (not
    clamped), `run` called on chunks of `batch`; the time is added to `decoder.seconds`. Non-finite
    pixels name a bundle file that changed since export before suspecting a reduced precision."""
    x = np.asarray(latents)
    want = tuple(decoder.info.latent)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise RuntimeFailure(f"decoder {decoder.kind}: expected NCHW latents (N, {', '.join(map(str, want))}), "
                             f"found shape {x.shape} (NHWC latents enter through latent_from_nhwc)")
    step = batch or len(x) or 1
    start = time.perf_counter()
    out = [np.asarray(run(np.ascontiguousarray(x[i:i + step], dtype=np.float32)), dtype=np.float32)
           for i in range(0, len(x), step)]
    decoder.seconds += time.perf_counter() - start
    images = np.concatenate(out) if out else np.zeros((0, *decoder.info.image), np.float32)
    if not np.isfinite(images).all():
        what = f"decoder {decoder.kind} ({decoder.precision}) produced non-finite pixels"
        changed = decoder.manifest.changed_file()      # a modified graph, not FP16, is to blame
        if changed:
            raise RuntimeFailure(f"{what}: {changed}; re-export or restore the bundle")
        hint = " (an FP16 overflow? try --precision fp32)" if decoder.precision != "fp32" else ""
        raise RuntimeFailure(f"{what}; expected finite images{hint}")
    return images
