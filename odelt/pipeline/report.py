"""Plain-text plan tables and the quality/latency Pareto plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from odelt.fileio import atomic_path, write_text_atomic
from odelt.pipeline import latent_stage
from odelt.runtime.budget.planner import Candidate, Choice, pareto_front


def plan_table(choice: Choice) -> str:
    """Every candidate with its prediction, the chosen one marked with '*'; plans that decode also
    show their decoder's median ms per batch and its share of the end-to-end median."""
    decoding = any(c.decoder for c, _ in choice.table)
    several = len({c.backend for c, _ in choice.table}) > 1           # the backend as an axis: name it
    head = f"  {'plan':<34} {'prec':<5} {'NFE':>3} {'blocks':>6} {'pred ms':>9} {'RMSE':>8} {'FD':>8}"
    lines = [head + (f" {'decoder':<12} {'decode ms':>10} {'share':>6}" if decoding else "")
             + (f" {'backend':<9}" if several else "")]
    for c, ms in sorted(choice.table, key=lambda cm: cm[1]):
        mark = "*" if c == choice.candidate else " "
        fd = f"{c.fd:8.3f}" if c.fd is not None else f"{'-':>8}"
        line = f"{mark} {c.name:<34} {c.precision:<5} {c.nfe:>3} {c.block_evals:>6} {ms:9.3f} {c.error:8.4f} {fd}"
        if decoding:
            share = choice.decode_share(c)
            line += (f" {decoder_label(c):<12} {share[0]:10.3f} {share[1]:6.1%}" if share
                     else f" {'-':<12} {'-':>10} {'-':>6}")
        lines.append(line + (f" {c.backend:<9}" if several else ""))
    return "\n".join(lines)


def decoder_label(c: Candidate) -> str:
    return f"{c.decoder}-{c.decoder_precision}" if c.decoder else "-"


def chosen_line(choice: Choice, budget_ms: float, quantile: float, batch: int) -> str:
    """One line about the chosen plan: what it runs, its prediction against the budget, its
    quality, and (when it decodes) the decoder's share of the end-to-end latency."""
    c = choice.candidate
    share = choice.decode_share()
    decode = (f"; decoder {decoder_label(c)} {share[0]:.2f} ms per batch, {share[1]:.1%} of the end-to-end median"
              if share else "")
    return (f"chosen: {c.name} ({c.solver}, NFE {c.nfe}, lengths {list(c.lengths)}, {c.precision}, backend {c.backend}): "
            f"predicted {choice.predicted_ms:.2f} ms (quantile {quantile:g}) <= budget {budget_ms:g} ms at batch "
            f"{batch}, held-out RMSE {c.error:.4f}{decode}")


def plot_pareto(choices: Sequence[tuple[Choice, float]], path: str | os.PathLike) -> Path:
    """Error vs predicted latency for every candidate, the frontier, and each chosen plan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = choices[0][0].table
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for prec, marker in (("fp32", "o"), ("fp16", "s"), ("int8", "^")):
        pts = [(ms, c.error) for c, ms in table if c.precision == prec]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, alpha=0.6, label=prec)
    front = pareto_front(table)
    ax.plot([ms for _, ms in front], [c.error for c, _ in front], "k--", lw=1, label="Pareto front")
    for choice, budget in choices:
        ax.axvline(budget, color="grey", lw=0.6, ls=":")
        ax.scatter([choice.predicted_ms], [choice.candidate.error], s=160, facecolors="none",
                   edgecolors="red", linewidths=1.5)
        ax.annotate(f"{budget:g} ms", (choice.predicted_ms, choice.candidate.error), textcoords="offset points",
                    xytext=(6, 6), fontsize=8, color="red")
    ax.set_xlabel("predicted latency per batch (ms)")
    ax.set_ylabel("held-out RMSE to teacher")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("quality vs latency (chosen plans circled)")
    return _save(fig, path)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


DEADLINE_LABELS = {"open": "open loop (summed medians)", "open95": "open loop (plan at q=0.95, chosen once)",
                   "closed": "closed loop", "anytime": "closed loop + anytime"}


def plot_deadline(runs: dict[str, dict], path: str | os.PathLike, hindsight: dict | None = None) -> Path:
    """Latency of every batch against the budget, one line per mode, the hog's batches shaded
    (runs: odelt.pipeline.interference.run_modes), and the hindsight-best fixed plan's batches
    under the hog (odelt.pipeline.interference.hindsight_run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(runs.values()))
    (on, off), budget = first["hog"], first["budget_ms"]
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    ax.axvspan(on - 0.5, off - 0.5, color="orange", alpha=0.15, label="CPU hog on the sampler's core")
    ax.axhline(budget, color="red", lw=1, ls="--", label=f"budget {budget:g} ms")
    for mode, r in runs.items():
        lat = r["latency_ms"]
        misses = sum(v > budget for v in lat)
        ax.plot(range(len(lat)), lat, marker=".", ms=3, lw=0.5, alpha=0.85,
                label=f"{DEADLINE_LABELS.get(mode, mode)}: {misses}/{len(lat)} late")
    if hindsight is not None:
        lat, (h_on, _) = hindsight["latency_ms"], hindsight["hog"]
        ax.plot(range(h_on, h_on + len(lat)), lat, color="black", lw=0.8, ls=":",
                label=f"best fixed plan in hindsight ({hindsight['plan']}): "
                      f"{sum(v > budget for v in lat)}/{len(lat)} late")
    ax.set_xlabel("batch")
    ax.set_ylabel("latency per batch (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    ax.set_title("deadlines under interference")
    return _save(fig, path)


def md_table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _now(run: dict) -> list[str]:
    if run.get("predicted_now_ms") is None:      # demo facts written before re-profiling existed
        return ["-", "-"]
    p, m = run["predicted_now_ms"], run["measured_ms"]
    return [f"{p:.2f}", f"{abs(m - p) / m:.1%}"]


def _decoding(run: dict) -> list[str]:
    """A plan's decoder, its predicted ms per batch and its share of the end-to-end prediction."""
    if "decoder" not in run:
        return ["-", "-", "-"]
    return [run["decoder"], f"{run['decode_ms']:.2f}", f"{run['decoder_share']:.1%}"]


def write_report(path: Path, facts: dict) -> Path:
    """DIR/report.md from the demo's facts (every number here was measured in that run)."""
    v, prof = facts["verify"], facts["profile"]
    lines = [f"# odelt-export demo: {facts['source']}", "",
             f"Device: {prof['device']['cpu']} ({prof['device']['cpu_count']} cores), backend {prof['backend']}. "
             f"Whole run: {facts['seconds']} s (stages already built are reused).", "",
             "## Parity with PyTorch (FP32, ONNX Runtime CPU)", "",
             f"Worst max-abs error {v['max_abs_err']:.2e} (limit {v['atol']:g}); weight bytes "
             + ", ".join(f"{k} {b / 1e6:.2f} MB" for k, b in v["weight_bytes"].items())
             + f" vs {v['param_bytes'] / 1e6:.2f} MB of PyTorch parameters.", ""]
    lengths = sorted({n for errs in v["per_length"].values() for n in errs}, key=int)
    lines += md_table(["layout"] + [f"l={n}" for n in lengths],
                       [[lay] + [f"{errs.get(n, float('nan')):.2e}" for n in lengths] for lay, errs in v["per_length"].items()])
    lines += ["", "## Latency per length (one network call, median ms)", ""]
    rows = []
    for prec, by_batch in prof["calls"].items():
        for b, by_len in by_batch.items():
            rows.append([prec, b] + [f"{by_len[n]['median_ms']:.3f}" for n in lengths if n in by_len])
    lines += md_table(["precision", "batch"] + [f"l={n}" for n in lengths], rows)
    lines += ["", "## INT8 / FP16 vs FP32 (same noise)", ""]
    for prec, rep in facts["quantize"].items():
        m = rep.get("metrics", {})
        fd = (f", FD-digits {m['fd']:.2f} vs {m['fd_fp32']:.2f} FP32 (relative {m['fd_rel']:.3f}, "
              f"{m.get('fd_samples', '?')} samples)") if m.get("fd") is not None else ""
        lines.append(f"- {prec} ({rep.get('flavour') or 'default'} flavour): final-sample RMSE vs FP32 "
                     f"{m.get('rmse', float('nan')):.4f} pooled, {m.get('rmse_worst', float('nan')):.4f} worst run"
                     f"{fd}; layers kept in FP32: {len(rep.get('fallback', []))}")
    fp32 = prof["calls"].get("fp32", {})
    for prec in [p for p in prof["calls"] if p != "fp32"]:
        for b, by_len in prof["calls"][prec].items():
            if b in fp32:
                ratios = [fp32[b][n]["median_ms"] / by_len[n]["median_ms"] for n in by_len]
                lines.append(f"- {prec} speed-up over FP32 at batch {b}: "
                             + ", ".join(f"l={n} {r:.2f}x" for n, r in zip(by_len, ratios)))
    lines += _rtx_lines(facts.get("rtx") or {})
    lines += ["", "## Schedules: held-out RMSE to the teacher (128-step Euler, full length)", ""]
    q = sorted(facts["quality"], key=lambda r: (r["precision"], r["error"]))
    rated = any("rate" in r for r in q)           # a latent bundle's rows: scored on decoded images
    lines += md_table(["plan", "precision", "NFE", "block evals", "RMSE", "FD-digits"] + (["rate"] if rated else []),
                       [[r["name"], r["precision"], len(r["call_lengths"]), sum(r["call_lengths"]),
                         f"{r['error']:.4f}", "-" if r["fd"] is None else f"{r['fd']:.2f}"]
                        + ([f"{r['rate']:.1%}" if "rate" in r else "-"] if rated else []) for r in q])
    lines += ["", "## Plans chosen for each budget (batch of images per call)", ""]
    lines += ["Predicted from the stored profile (which chose the plan), and from a profile of the plan's",
              "calls taken just before it ran (the difference is the machine's speed drifting).", ""]
    decoding = any("decoder" in r for r in facts["runs"])
    lines += md_table(["budget ms", "plan", "backend", "precision", "NFE", "RMSE", "predicted ms", "measured ms",
                        "error", "re-profiled ms", "error"] + (["decoder", "decode ms", "decoder share"] if decoding else []),
                       [[r["budget_ms"], r["plan"], r.get("backend", "ort"), r["precision"], r["nfe"], f"{r['error']:.4f}",
                         f"{r['predicted_ms']:.2f}", f"{r['measured_ms']:.2f}",
                         f"{abs(r['measured_ms'] - r['predicted_ms']) / r['measured_ms']:.1%}"]
                        + _now(r) + (_decoding(r) if decoding else []) for r in facts["runs"]])
    lines += _backend_lines(facts)
    lines += ["", "![pareto](pareto.png)", ""] + [f"![{r['plan']}]({r['grid']})" for r in facts["runs"]]
    lines += _deadline_lines(facts.get("deadline"))
    lines += latent_lines(facts.get("latent_quality"))
    return write_text_atomic(path, "\n".join(lines) + "\n")


def _backend_lines(facts: dict) -> list[str]:
    """Which backend won each budget, when the plans were chosen across several."""
    profiles = facts.get("profiles") or {}
    if len(profiles) < 2:
        return []
    won = ", ".join(f"{r['budget_ms']:g} ms: {r.get('backend', 'ort')} ({r['precision']})" for r in facts["runs"])
    return ["", f"Plans were chosen across backends {', '.join(sorted(profiles))} (each predicted from its own "
                f"profile on this device); the backend that won each budget: {won}."]


def _rtx_lines(rtx: dict) -> list[str]:
    """TensorRT-RTX engine sets built here ahead of time (they run on an RTX GPU, not on this CPU)."""
    if not rtx:
        return ["", "## TensorRT-RTX engines", "", "Not built: the `rtx` extra (tensorrt-rtx) is not installed."]
    lines = ["", "## TensorRT-RTX engines (built on this CPU, for RTX GPUs; not run here)", ""]
    rows = []
    for precision, f in rtx.items():
        ort = f.get("ort_engine_bytes")
        rows.append([precision, f["set"], f"{f['plan_bytes_total'] / 1e6:.2f}", f"{f['weights_bytes_total'] / 1e6:.2f}",
                     f"{f['onnx_bytes_total'] / 1e6:.2f}", "-" if ort is None else f"{ort / 1e6:.2f}",
                     f"{f['build_s_total']:.1f}" + (" (cached)" if f["up_to_date"] else ""),
                     ", ".join(map(str, f["compute_capabilities"])) or "portable"])
    lines += md_table(["precision", "engine set", "plan MB", "weights MB", "ONNX MB", "ORT engine MB",
                        "build s", "targets"], rows)
    return lines


def _deadline_lines(d: dict | None) -> list[str]:
    """The deadline stage: batches under one budget, a CPU hog on the sampler's core in the middle."""
    if not d:
        return []
    on, off = d["hog"]
    lines = ["", "## Deadlines under interference", "",
             f"{d['batches']} batches of {d['batch']} at a budget of {d['budget_ms']:g} ms; batches {on}-{off - 1} "
             "share the sampler's core with a CPU hog. Late: batches over the budget (wall time of the whole batch).", ""]
    rows = []
    for mode, r in d["modes"].items():
        lat, q = r["latency_ms"], r["rmse"]
        quiet = [i for i in range(len(lat)) if not on <= i < off]
        late = lambda idx: sum(lat[i] > d["budget_ms"] for i in idx)  # noqa: E731
        rows.append([DEADLINE_LABELS.get(mode, mode), f"{late(quiet)}/{len(quiet)}", f"{late(range(on, off))}/{off - on}",
                     f"{sum(q[i] for i in quiet) / len(quiet):.4f}", f"{sum(q[on:off]) / (off - on):.4f}",
                     r["replans"], int(sum(r["switches"])), int(sum(r.get("exits", []))),
                     _regret(sum(q[on:off]) / (off - on), d.get("hindsight"))])
    best = d.get("hindsight")
    if best:
        rows.append([f"best fixed plan in hindsight ({best['plan']})", "", f"{round(best['miss_rate'] * (off - on))}/{off - on}",
                     "", f"{best['rmse']:.4f}", 0, 0, 0, ""])
    lines += md_table(["mode", "late (quiet)", "late (hog)", "RMSE quiet", "RMSE hog", "re-plans", "switches",
                       "exits inside a step", "regret (hog)"], rows)
    if "hindsight" in d and not best:
        lines += ["", "No fixed plan of the front held the hog (<= 1% late): no regret to report."]
    return lines + ["", "Regret: the mode's RMSE under the hog over the best fixed plan's in hindsight (the "
                    "lowest RMSE among the front's plans that ran late on <= 1% of the hog's batches) - 1.",
                    "", "![deadline](deadline.png)"]


def _regret(rmse: float, best: dict | None) -> str:
    return f"{rmse / best['rmse'] - 1:+.1%}" if best else ""


def latent_lines(latent: dict | None) -> list[str]:
    """The report's latent quality section: the headline and a length x steps table."""
    if not latent:
        return []
    rows = latent["rows"]
    lengths = sorted({r["length"] for r in rows})
    steps = sorted({r["steps"] for r in rows})
    cell = {(r["length"], r["steps"]): r for r in rows}
    lines = ["", "## Latent model: decoded samples scored by the digits classifier", "",
             f"{latent['n']} samples per cell (labels cycling 0..9, seed {latent['seed']}), sampled through the "
             f"bundle (ONNX Runtime, {latent['precision']}, uniform Euler) and decoded by its "
             f"{latent['decoder']} decoder graph. Rate: classified as the asked label with confidence > 0.9.", "",
             f"**Headline: {latent_stage.headline_text(latent)}.**", ""]
    lines += md_table(["length"] + [f"{k} steps: FD-digits" for k in steps] + [f"{k} steps: rate" for k in steps],
                      [[n] + [f"{cell[n, k]['fd_digits']:.2f}" if (n, k) in cell else "-" for k in steps]
                       + [f"{cell[n, k]['rate']:.1%}" if (n, k) in cell else "-" for k in steps] for n in lengths])
    return lines
