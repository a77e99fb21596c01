"""Readable summaries of a bundle (`inspect`) and of a verification report (`verify`)."""

from __future__ import annotations

from odelt.bundle.bundle import FORMAT, Bundle
from odelt.bundle.iospec import TensorSpec


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _tensor(t: TensorSpec) -> str:
    return f"{t.name}[{','.join(str(d) for d in t.shape)}]"


def _tensors(ts: tuple[TensorSpec, ...]) -> str:
    mods = [t for t in ts if t.name.startswith("mod")]
    rest = [_tensor(t) for t in ts if not t.name.startswith("mod")]
    if len(mods) > 2:                          # mod0..mod27 would drown the line
        rest.insert(0, f"{mods[0].name}..{mods[-1].name}[{','.join(str(d) for d in mods[0].shape)}]")
    else:
        rest[:0] = [_tensor(t) for t in mods]
    return " ".join(rest)


def describe(manifest: Bundle) -> list[str]:
    cfg, b, params = manifest.config, manifest.batch, manifest.param_bytes
    lines = [
        f"bundle {manifest.root} ({FORMAT}): opset {manifest.opset}, guidance {'yes' if manifest.guidance else 'no'}, "
        f"batch {b.min}:{b.opt}:{b.max}",
        f"model {manifest.source or '?'} (hash {manifest.model_hash or '?'}): hidden {cfg.hidden_size}, depth "
        f"{cfg.depth}, heads {cfg.num_heads}, group {cfg.depth_group}, {cfg.in_channels}x{cfg.input_size}x"
        f"{cfg.input_size}, {cfg.num_classes} classes, {_mb(params)} of parameters",
        "weights: " + ", ".join(f"{k} {_mb(v)} ({v / params:.2f}x)" for k, v in manifest.weight_bytes.items()),
        f"lengths: {', '.join(str(n) for n in manifest.lengths)}",
        "graphs:",
    ]
    for name, spec in manifest.graphs.items():
        g = manifest.graph_file(name)
        blocks = f"blocks {spec.blocks[0]}-{spec.blocks[-1]}" if spec.blocks else "no blocks"
        ext = " +external data" if g.external_data else ""
        lines.append(f"  {spec.file:<28} {spec.kind:<12} {blocks:<14} {_mb(g.weight_bytes):>10}{ext}")
        lines.append(f"      in:  {_tensors(spec.inputs)}")
        lines.append(f"      out: {_tensors(spec.outputs)}")
    lines.append("chains:")
    for layout in manifest.layouts:
        for n, chain in manifest.chains(layout).items():
            lines.append(f"  {layout:<10} l={n:<3} {' -> '.join(chain)}")
    for kind, d in manifest.decoders.items():
        lines.append(f"decoder {kind}: graph {d.graph}, latent {'x'.join(map(str, d.latent))} -> image "
                     f"{'x'.join(map(str, d.image))}, {d.params / 1e6:.2f} M parameters, 1/{d.scaling_factor:g} "
                     f"{'folded into the graph' if d.scale_folded else 'NOT folded'}, from {d.source}")
    lines.append("tables: " + (", ".join(f"{k} (l={t['length']}, {len(t['t'])} steps, y={t['y']})"
                                         for k, t in manifest.tables.items()) or "none"))
    lines.append("precisions: " + ", ".join(manifest.precisions))
    lines.append("engine sets: " + (", ".join(sorted(manifest.engine_sets)) or "none"))
    return lines


def describe_verify(report: dict) -> list[str]:
    verdict = "PASS" if report["ok"] else "FAIL"
    lines = [f"{verdict}: max |onnxruntime - pytorch| = {report['max_abs_err']:.3g} (limit {report['atol']:g}) "
             f"over batch sizes {report['batch_sizes']}, {report['cases_per_batch_size']} cases each"]
    for layout, errs in report["per_length"].items():
        lines.append(f"  {layout:<10} " + "  ".join(f"l={n}: {e:.3g}" for n, e in errs.items()))
    for kind, err in report.get("decoders", {}).items():
        lines.append(f"  decoder {kind:<6} |onnxruntime - diffusers| = {err:.3g}")
    lines.append(f"onnx.checker (full): {len(report['checked_graphs'])} graphs ok")
    lines.append(f"parameters {_mb(report['param_bytes'])}; weights " + ", ".join(
        f"{k} {_mb(v)} ({report['weight_ratio'][k]:.3f}x)" for k, v in report["weight_bytes"].items()))
    lines.append(f"duplicated initializers across segment graphs: {report['duplicate_initializers']}")
    return lines
