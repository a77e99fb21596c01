"""Model IO described once, as data: which graphs a layout has, their tensors, dtypes and dynamic
axes, and which graphs a length runs in order. Export, verification, the engine builder and the
runtime all read these specs (from here or from a bundle's manifest.json); nobody re-derives them.

Shapes are tuples of ints and axis names. Two dynamic axes exist:
  * "batch"   -- the caller's batch B (images in, velocities out);
  * "2*batch" -- rows inside a classifier-free-guidance graph: B conditional rows, then B null-class
                 rows (only when the bundle was exported with cfg; otherwise rows are "batch").
`TensorSpec.resolve(B)` turns a shape into ints; `GraphSpec.shape_ranges(batch)` gives an engine
builder its min/opt/max shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from odelt.errors import ConfigError
from odelt.models.config import DiTConfig

BATCH = "batch"
CFG_ROWS = "2*batch"
LAYOUTS = ("segments", "per-length")
DECODER_LAYOUT = "decoder"  # graphs of the decoder stage (latent -> image); not a DiT layout
ZERO_HEAD = "head0"         # segments: the exit of lengths with no live block (the final layer on V = 0)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str                          # numpy dtype name: "float32" or "int32"
    shape: tuple[int | str, ...]        # ints are static; strings are dynamic axis names

    def resolve(self, batch: int) -> tuple[int, ...]:
        """Concrete shape for caller batch size `batch`."""
        return tuple(_resolve_dim(d, batch) for d in self.shape)

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


def _resolve_dim(dim: int | str, batch: int) -> int:
    if isinstance(dim, int):
        return dim
    if dim == BATCH:
        return batch
    if dim == CFG_ROWS:
        return 2 * batch
    raise ConfigError(f"unknown dynamic axis {dim!r}; expected {BATCH!r} or {CFG_ROWS!r}")


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes an engine must serve (graphs themselves always have a dynamic batch)."""

    min: int = 1
    opt: int = 1
    max: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(f"batch range must satisfy 1 <= MIN <= OPT <= MAX, found "
                              f"{self.min}:{self.opt}:{self.max}")

    @classmethod
    def parse(cls, text: str) -> BatchRange:
        """'MIN:OPT:MAX' or a single 'N' (static batch N)."""
        parts = str(text).split(":")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            nums = []
        if len(nums) == 1:
            nums = nums * 3
        if len(nums) != 3:
            raise ConfigError(f"--batch must be MIN:OPT:MAX (positive integers) or N, found {text!r}")
        return cls(*nums)

    def to_dict(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class GraphSpec:
    name: str                           # unique in a bundle: "cond", "blocks_0-3", "head", "head0", "length_4"
    layout: str                         # "segments", "per-length" or "decoder"
    kind: str                           # "conditioning" | "chunk" | "head" (head, head0) | "length" | "decoder"
    blocks: tuple[int, ...]             # DiT blocks whose token-path weights live in this graph
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    length: int | None = None           # per-length graphs: the length folded into the graph

    @property
    def file(self) -> str:
        """Path of the ONNX file relative to the bundle root."""
        return f"{self.layout}/{self.name}.onnx"

    def shape_ranges(self, batch: BatchRange) -> dict[str, tuple[tuple[int, ...], ...]]:
        """{input name: (min shape, opt shape, max shape)} for an engine optimisation profile."""
        return {t.name: (t.resolve(batch.min), t.resolve(batch.opt), t.resolve(batch.max)) for t in self.inputs}

    def to_dict(self) -> dict:
        return {"name": self.name, "layout": self.layout, "kind": self.kind, "blocks": list(self.blocks),
                "length": self.length, "file": self.file,
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, d: dict) -> GraphSpec:
        return cls(d["name"], d["layout"], d["kind"], tuple(d["blocks"]),
                   tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   tuple(TensorSpec.from_dict(t) for t in d["outputs"]), d.get("length"))


@dataclass(frozen=True)
class LayoutSpec:
    """The graphs of one layout and, per length, the ordered graph names that compute it."""

    layout: str
    graphs: tuple[GraphSpec, ...]
    chains: dict[int, tuple[str, ...]]


# -- the tensors --------------------------------------------------------------------------------

def _image(cfg: DiTConfig, name: str, channels: int) -> TensorSpec:
    return TensorSpec(name, "float32", (BATCH, channels, cfg.input_size, cfg.input_size))


def _per_sample(name: str, dtype: str) -> TensorSpec:
    return TensorSpec(name, dtype, (BATCH,))


def caller_inputs(cfg: DiTConfig, guided: bool) -> tuple[TensorSpec, ...]:
    """What a sampler step provides: x_t, t, dt_base, y (and the guidance scale when cfg)."""
    ins = (_image(cfg, "x", cfg.in_channels), _per_sample("t", "float32"),
           _per_sample("dt_base", "int32"), _per_sample("y", "int32"))
    return ins + ((_per_sample("cfg_scale", "float32"),) if guided else ())


def _velocity(cfg: DiTConfig) -> TensorSpec:
    return _image(cfg, "velocity", cfg.out_channels)


def _tokens(cfg: DiTConfig, name: str, guided: bool) -> TensorSpec:
    return TensorSpec(name, "float32", (CFG_ROWS if guided else BATCH, cfg.num_tokens, cfg.hidden_size))


def block_mod(cfg: DiTConfig, i: int, guided: bool) -> TensorSpec:
    """adaLN modulation of block i: shift/scale/gate for attention then MLP, (rows, 6D)."""
    return TensorSpec(f"mod{i}", "float32", (CFG_ROWS if guided else BATCH, 6 * cfg.hidden_size))


def final_mod(cfg: DiTConfig, guided: bool) -> TensorSpec:
    """adaLN modulation of the final layer: shift/scale, (rows, 2D)."""
    return TensorSpec("final_mod", "float32", (CFG_ROWS if guided else BATCH, 2 * cfg.hidden_size))


# -- the layouts --------------------------------------------------------------------------------

def check_lengths(cfg: DiTConfig, lengths: tuple[int, ...]) -> tuple[int, ...]:
    """Sorted unique lengths, each in [1, depth]. Every such length runs (as the model does): below
    the first group end no block is live, and a length ending mid-group drops its trailing blocks."""
    if not lengths:
        raise ConfigError("expected at least one length, found none")
    for length in lengths:
        if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= cfg.depth:
            raise ConfigError(f"length must be an integer in [1, {cfg.depth}], found {length!r}")
    return tuple(sorted(set(lengths)))


def per_length_spec(cfg: DiTConfig, lengths: tuple[int, ...], guided: bool) -> LayoutSpec:
    """One self-contained graph per length; only its live blocks (none below the first group end)."""
    lengths = check_lengths(cfg, lengths)
    graphs = tuple(GraphSpec(f"length_{n}", "per-length", "length", tuple(range(cfg.live_depth(n))),
                             caller_inputs(cfg, guided), (_velocity(cfg),), length=n)
                   for n in lengths)
    return LayoutSpec("per-length", graphs, {n: (g.name,) for n, g in zip(lengths, graphs)})


def segments_spec(cfg: DiTConfig, lengths: tuple[int, ...], guided: bool) -> LayoutSpec:
    """Conditioning graph, one chunk per span between exits, one exit head.

    A length l runs cond -> chunks up to its exit live_depth(l) -> head. The chunks hold each
    block's token-path weights exactly once; the conditioning graph holds every adaLN layer.
    A length with no live block (below the first group end) has V = 0, so it runs cond -> head0:
    the final layer on a zero V, which reads only final_mod (present only when such a length is asked).
    """
    lengths = check_lengths(cfg, lengths)
    live = {n: cfg.live_depth(n) for n in lengths}
    exits = sorted(set(live.values()) - {0})
    cond_ins = tuple(t for t in caller_inputs(cfg, False) if t.name != "x") + (_per_sample("l", "int32"),)
    cond = GraphSpec("cond", "segments", "conditioning", (), cond_ins,
                     tuple(block_mod(cfg, i, guided) for i in range(max(exits, default=0))) +
                     (final_mod(cfg, guided),))
    chunks, start = [], 0
    for end in exits:
        blocks = tuple(range(start, end))
        state_in = (_image(cfg, "x", cfg.in_channels),) if start == 0 else (
            _tokens(cfg, "h", guided), _tokens(cfg, "V", guided))
        ins = state_in + tuple(block_mod(cfg, i, guided) for i in blocks)
        outs = (_tokens(cfg, "h_out", guided), _tokens(cfg, "V_out", guided))
        chunks.append(GraphSpec(f"blocks_{start}-{end - 1}", "segments", "chunk", blocks, ins, outs))
        start = end
    guidance = (_per_sample("cfg_scale", "float32"),) if guided else ()
    heads = []
    if exits:
        heads.append(GraphSpec("head", "segments", "head", (), (_tokens(cfg, "V", guided), final_mod(cfg, guided))
                               + guidance, (_velocity(cfg),)))
    if 0 in live.values():
        heads.append(GraphSpec(ZERO_HEAD, "segments", "head", (), (final_mod(cfg, guided),) + guidance,
                               (_velocity(cfg),)))
    chains = {}
    for n in lengths:
        upto = [c.name for c in chunks if c.blocks[-1] < live[n]]
        chains[n] = (cond.name, *upto, "head" if upto else ZERO_HEAD)
    return LayoutSpec("segments", (cond, *chunks, *heads), chains)


def layout_spec(cfg: DiTConfig, layout: str, lengths: tuple[int, ...], guided: bool) -> LayoutSpec:
    if layout == "segments":
        return segments_spec(cfg, lengths, guided)
    if layout == "per-length":
        return per_length_spec(cfg, lengths, guided)
    raise ConfigError(f"unknown layout {layout!r}; expected one of {list(LAYOUTS)}")


def decoder_spec(kind: str, latent: tuple[int, int, int], image: tuple[int, int, int]) -> GraphSpec:
    """The decoder stage of a latent model: the DiT's latent x (NCHW, exactly as the velocity graphs
    take and the sampler returns it; the VAE's 1/scaling_factor is folded into the graph) -> an
    image in about [-1, 1] (B, C_img, H_img, W_img). One graph per VAE kind ("sd", "taesd")."""
    return GraphSpec(f"decoder_{kind}", DECODER_LAYOUT, "decoder", (),
                     (TensorSpec("latent", "float32", (BATCH, *latent)),),
                     (TensorSpec("image", "float32", (BATCH, *image)),))
