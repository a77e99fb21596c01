"""Bench group `latent` (issue 14 §4): what the decoder stage costs next to DiT-B/2 forwards, here.

Models, all with random weights (seeded; every parameter moved off its init so no zero-init layer
hides work): DiT-B/2 (odelt.models.config.PRESETS, 32x32x4 latents, 256 tokens), the SD-VAE in its
ft-MSE configuration and TAESD in its standard one (odelt.latent.vae.KINDS), the VAEs saved as
diffusers folders and exported with the DiT into one bundle as `export --vae sd:DIR --vae taesd:DIR`
does (per-length layout at l=4 and l=12, opset 17).

Timing: batch 1, ONNX Runtime with one intra-op thread; the DiT graphs through plain sessions, the
decoders through the runtime's decoder (odelt.runtime.backends.decoder.open_decoder). The four calls take turns
in one process (each round: l=4, l=12, SD-VAE, TAESD; one warm-up round first), so load on this
shared machine lands on all of them alike; ratios are per round, then the median over rounds.

Figures (`latent_` prefix):
  vae_decode_over_dit_forward_l12_{sd,taesd}    one decode / one l=12 forward (_macs: the MAC ratio;
                                                 _min: ratio of the minimum times)
  end_to_end_speedup_l4_vs_l12_nfe1_{sd,taesd,latent_only}   (l12 + decode) / (l4 + decode): one
                                                 Euler step at l=4 instead of l=12, decoded (_macs beside)
  planner_decoder_share_nfe1_{l4,l12}_{sd,taesd} the decoder's share of the end-to-end median, as the
                                                 planner reports it (odelt.runtime.budget.planner.Choice) from a
                                                 profile made of these timings
  {dit_l4,dit_l12,decode_sd,decode_taesd}_ms_{median,min}, gmacs_{...}
  fp16_decoder_rmse_{sd,taesd}                   the FP16 decoder's image vs the FP32 one on the same
                                                 random latent (the fp16 variant's converter and accuracy
                                                 check), _max_abs / _psnr_db beside. Random weights say
                                                 nothing about the real decoders' FP16 range.
  load_avg_start / _end, rounds

MACs are counted on the PyTorch models while they run (convolutions, linears, matmuls, attention),
batch 1. `--quick`: 2 rounds instead of 5 (an SD-VAE decode takes 10-14 s on this CPU).

    .venv/bin/python bench/run.py --only latent [--quick] --out out/bench-latent.json
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from odelt.exporter import ExportOptions, export_bundle
from odelt.latent import KINDS
from odelt.models import PRESETS, DiT
from odelt.onnxrt import open_session
from odelt.runtime import MEDIAN, Candidate, Predictor, choose, open_decoder, step_feeds

PRESET = "DiT-B/2"
LENGTHS = (4, 12)
DECODERS = ("sd", "taesd")
FP16_SAMPLES = 1              # latents decoded by FP32 and FP16 each (seconds per SD-VAE decode)
# --smoke: DiT-S/2 (same latents and lengths, a quarter of the width) and VAEs of the same structure
# with few channels, so the whole group runs in seconds; its figures only prove the code runs.
SMOKE_PRESET = "DiT-S/2"
SMOKE_VAES = {"sd": {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4, "layers_per_block": 1},
              "taesd": {"encoder_block_out_channels": [8, 8, 8, 8], "decoder_block_out_channels": [8, 8, 8, 8]}}


class MacCounter(TorchFunctionMode):
    """Multiply-accumulates of the convolutions, linears and matrix products a forward runs."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.linear:
            self.macs += out.numel() * args[1].shape[1]
        elif func in (F.conv2d, torch.conv2d):
            w = args[1]
            self.macs += out.numel() * w.shape[1] * w.shape[2] * w.shape[3]
        elif func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm):
            self.macs += out.numel() * args[0].shape[-1]
        elif func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]
            self.macs += q.numel() * k.shape[-2] + out.numel() * k.shape[-2]      # QK^T and AV
        return out


def count_macs(fn: Callable[[], Any]) -> int:
    with torch.no_grad(), MacCounter() as counter:
        fn()
    return counter.macs


def perturbed(model: torch.nn.Module, std: float, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model.eval()


def random_vae_folder(kind: str, folder: Path, seed: int, smoke: bool = False) -> Path:
    import diffusers

    torch.manual_seed(seed)
    config = {**KINDS[kind].standard, **(SMOKE_VAES[kind] if smoke else {})}
    model = getattr(diffusers, KINDS[kind].class_name)(**config)
    perturbed(model, 0.02, seed).save_pretrained(folder, safe_serialization=True)
    return folder


def build(work: Path, smoke: bool = False) -> tuple[Any, dict[str, int]]:
    """The bundle (DiT-B/2 at l=4/12 + both decoders) and every graph's MACs at batch 1."""
    from odelt.exporter import DecoderGraph
    from odelt.latent import load_vae

    torch.manual_seed(0)
    preset = SMOKE_PRESET if smoke else PRESET
    dit = perturbed(DiT(PRESETS[preset]), 0.02, 0)
    vaes = tuple((k, str(random_vae_folder(k, work / k, seed=i + 1, smoke=smoke))) for i, k in enumerate(DECODERS))
    manifest = export_bundle(dit, work / "bundle", ExportOptions(layouts=("per-length",), lengths=LENGTHS, vaes=vaes),
                             source=f"bench:random-{preset}", source_hash=None)
    x = torch.randn(1, 4, 32, 32)
    t, dt, y = torch.rand(1), torch.full((1,), 2, dtype=torch.int32), torch.zeros(1, dtype=torch.int64)
    macs = {f"dit_l{n}": count_macs(lambda n=n: dit(x, t, dt, y, n)) for n in LENGTHS}
    for kind, path in vaes:
        graph = DecoderGraph(load_vae(kind, path)).eval()
        macs[f"decode_{kind}"] = count_macs(lambda graph=graph: graph(x))
    return manifest, macs


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """ms of every function per round, the functions taking turns; one untimed warm-up round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) * 1e3)
    return times


def time_graphs(manifest, rounds: int) -> dict[str, list[float]]:
    fns: dict[str, Callable[[], Any]] = {}
    for n in LENGTHS:
        sess = open_session(manifest.graph_path(f"length_{n}"), threads=1)
        names = {i.name for i in sess.get_inputs()}
        feeds = {k: v for k, v in step_feeds(manifest, n, 1).items() if k in names}
        fns[f"dit_l{n}"] = lambda sess=sess, feeds=feeds: sess.run(None, feeds)
    latent = np.random.default_rng(0).standard_normal((1, 4, 32, 32)).astype(np.float32)
    with ExitStack() as stack:
        for kind in DECODERS:
            decoder = stack.enter_context(open_decoder(manifest, kind, "fp32", threads=1))
            fns[f"decode_{kind}"] = lambda decoder=decoder: decoder.decode(latent)
        return interleaved(fns, rounds)


def ratios(times: dict[str, list[float]], macs: dict[str, int]) -> dict[str, float]:
    per_round = lambda f: statistics.median(f(i) for i in range(len(times["dit_l4"])))   # noqa: E731
    lo = {k: min(v) for k, v in times.items()}
    out: dict[str, float] = {}
    for kind in DECODERS:
        d = f"decode_{kind}"
        out[f"latent_vae_decode_over_dit_forward_l12_{kind}"] = per_round(lambda i: times[d][i] / times["dit_l12"][i])
        out[f"latent_vae_decode_over_dit_forward_l12_{kind}_min"] = lo[d] / lo["dit_l12"]
        out[f"latent_vae_decode_over_dit_forward_l12_{kind}_macs"] = macs[d] / macs["dit_l12"]
        out[f"latent_end_to_end_speedup_l4_vs_l12_nfe1_{kind}"] = per_round(
            lambda i: (times["dit_l12"][i] + times[d][i]) / (times["dit_l4"][i] + times[d][i]))
        out[f"latent_end_to_end_speedup_l4_vs_l12_nfe1_{kind}_macs"] = \
            (macs["dit_l12"] + macs[d]) / (macs["dit_l4"] + macs[d])
    out["latent_end_to_end_speedup_l4_vs_l12_nfe1_latent_only"] = per_round(
        lambda i: times["dit_l12"][i] / times["dit_l4"][i])
    out["latent_end_to_end_speedup_l4_vs_l12_nfe1_latent_only_macs"] = macs["dit_l12"] / macs["dit_l4"]
    return {k: round(v, 4) for k, v in out.items()}


def planner_shares(times: dict[str, list[float]]) -> dict[str, float]:
    """The decoder's share the planner reports, from a profile holding these timings' medians."""
    cell = lambda k: {"median_ms": statistics.median(times[k]), "p90_ms": max(times[k])}   # noqa: E731
    prof = {"calls": {"fp32": {"1": {str(n): cell(f"dit_l{n}") for n in LENGTHS}}},
            "decoders": {"fp32": {"1": {k: cell(f"decode_{k}") for k in DECODERS}}}}
    plans = [Candidate(f"euler-1-l{n}+{k}", "uniform", "euler", (n,), "fp32", 0.0, decoder=k)
             for n in LENGTHS for k in DECODERS]
    choice = choose(plans, float("inf"), Predictor(prof, 1, MEDIAN))
    return {f"latent_planner_decoder_share_nfe1_l{c.lengths[0]}_{c.decoder}": round(choice.decode_share(c)[1], 4)
            for c in plans}


def fp16_rmse(manifest) -> dict[str, Any]:
    """The FP16 decoder against FP32 on random latents, per kind: the graph the bundle's fp16
    variant would hold (odelt.calibration.decoder.fp16_decoder) compared by the variant's own
    accuracy check (decoder_accuracy). Not through quantize_bundle itself: its DiT accuracy guard
    samples DiT-B/2 many times over, which is not what this group measures."""
    import onnx

    from odelt.calibration import decoder_accuracy, fp16_decoder

    latents = np.random.default_rng(1).standard_normal((FP16_SAMPLES, 4, 32, 32)).astype(np.float32)
    out: dict[str, Any] = {"latent_fp16_converter": "odelt.calibration.decoder.fp16_decoder",
                           "latent_fp16_samples": FP16_SAMPLES}
    for kind in DECODERS:
        model = onnx.load(str(manifest.graph_path(manifest.decoder(kind).graph)))
        half, report = fp16_decoder(model)
        acc = decoder_accuracy(model, half, latents)
        out[f"latent_fp16_decoder_rmse_{kind}"] = round(acc["rmse"], 7)
        out[f"latent_fp16_decoder_max_abs_{kind}"] = round(acc["max_abs_err"], 6)
        out[f"latent_fp16_decoder_psnr_db_{kind}"] = round(acc["psnr_db"], 2)
        out[f"latent_fp16_decoder_finite_{kind}"] = acc["finite"]
        out[f"latent_fp32_decoder_image_absmax_{kind}"] = round(acc["image_absmax_fp32"], 4)
        out[f"latent_fp16_decoder_fp32_nodes_{kind}"] = sum(report["fp32_nodes"].values())
    return out


def run(quick: bool = False, smoke: bool = False) -> dict:
    rounds = 1 if smoke else 2 if quick else 5
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="odelt-bench-latent-") as tmp:
        start = time.perf_counter()
        manifest, macs = build(Path(tmp), smoke)
        out: dict[str, Any] = {"latent_build_s": round(time.perf_counter() - start, 1),
                               "latent_load_avg_start": [round(v, 2) for v in os.getloadavg()]}
        times = time_graphs(manifest, rounds)
        out["latent_load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
        out.update(ratios(times, macs))
        out.update(planner_shares(times))
        for key, ts in times.items():
            out[f"latent_{key}_ms_median"] = round(statistics.median(ts), 2)
            out[f"latent_{key}_ms_min"] = round(min(ts), 2)
            out[f"latent_gmacs_{key}"] = round(macs[key] / 1e9, 3)
        out.update(fp16_rmse(manifest))
        out["latent_rounds"] = rounds
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=1))
