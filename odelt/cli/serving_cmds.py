"""Commands about serving: triton (write a Triton Inference Server model repository)."""

from __future__ import annotations

import click

from odelt.cli import cli
from odelt.bundle.iospec import LAYOUTS
from odelt.serving.repository import ENGINE_BACKENDS, ENGINES, SAMPLERS


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--out", "out", required=True, type=click.Path(), help="Model repository folder to write.")
@click.option("--engines", type=click.Choice(ENGINES), default="cpu", show_default=True,
              help="Graph models: TensorRT plans (tensorrt_plan), ONNX (onnxruntime_onnx), or Python-backend "
                   "models running ONNX Runtime (cpu: what the pip-installable tritonserver can run).")
@click.option("--precision", default="fp32", show_default=True, help="Precision of the graphs and plans served.")
@click.option("--max-batch", type=int, default=None, help="Rows per graph execution (default: the bundle's batch max).")
@click.option("--instances", type=int, default=1, show_default=True,
              help="Instances of each graph model (per GPU with tensorrt).")
@click.option("--sampler-instances", type=int, default=4, show_default=True,
              help="Sampling requests run side by side (their step calls are batched together).")
@click.option("--layout", type=click.Choice(LAYOUTS), default=None,
              help="Graph layout to serve (default: segments when the bundle has it).")
@click.option("--engine-set", default=None,
              help="tensorrt, or the engine mode over openvino: the engine set to serve, when there are several.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None,
              help="engine: one in-process batching engine serves every request (no graph models); bls: every "
                   "step is a BLS call to the graph models (default: engine with --engines cpu, latent bundles "
                   "included, unless guidance is folded into the graphs; else bls; see docs/serving.md).")
@click.option("--backend", type=click.Choice(ENGINE_BACKENDS), default="ort", show_default=True,
              help="engine: the runtime backend the sampler runs in process (openvino: the bundle's OpenVINO "
                   "engine set at --precision, built with `odelt-export build --backend openvino`).")
@click.option("--threads", type=int, default=1, show_default=True, help="engine: intra-op threads of its sessions.")
@click.option("--window-ms", type=float, default=0.0, show_default=True,
              help="engine: wait this long for more requests before a pass below the row cap.")
@click.option("--refill-ms", type=float, default=1.0, show_default=True,
              help="engine: after a pass that k requests left, wait up to this long for k new ones.")
@click.option("--force", is_flag=True, help="Replace an existing repository.")
def triton(bundle: str, out: str, engines: str, precision: str, max_batch: int | None, instances: int,
           sampler_instances: int, layout: str | None, engine_set: str | None, sampler: str | None, backend: str,
           threads: int, window_ms: float, refill_ms: float, force: bool) -> None:
    """Write a Triton Inference Server model repository for BUNDLE."""
    from odelt.serving.repository import RepoOptions, write_repository

    opts = RepoOptions(engines=engines, precision=precision, max_batch=max_batch, instances=instances,
                       sampler_instances=sampler_instances, layout=layout, engine_set=engine_set, sampler=sampler,
                       backend=backend, threads=threads, window_ms=window_ms, refill_ms=refill_ms, force=force)
    repo = write_repository(bundle, out, opts)
    models = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    import json

    mode = json.loads((repo / "odelt_repository.json").read_text())["mode"]
    via = f"the in-process engine ({backend})" if mode == "engine" else f"BLS to {engines} graph models"
    click.echo(f"wrote {repo}: {len(models)} models ({', '.join(models)}), sampler via {via}, precision {precision}")
