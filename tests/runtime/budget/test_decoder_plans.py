"""The decoder axis of the quality table and the decoder section of a profile, on synthetic
manifests and profiles: exact candidates, composed errors, interpolated costs, refused timings."""

import math

import pytest

from odelt.errors import BundleError, ConfigError
from odelt.bundle.bundle import Bundle
from odelt.bundle.iospec import decoder_spec
from odelt.fileio import write_json_atomic
from odelt.runtime.budget.plans import FORMAT, QUALITY, load_candidates
from odelt.runtime.budget.profile import FORMAT as PROFILE_FORMAT, decode_cost, decoder_precisions, load_profile

ROWS = [{"name": "a-fp32", "schedule": "a", "solver": "euler", "precision": "fp32", "error": 0.05, "fd": None,
         "call_lengths": [8, 8]},
        {"name": "a-int8", "schedule": "a", "solver": "euler", "precision": "int8", "error": 0.08, "fd": None,
         "call_lengths": [8, 8]}]
# image RMSE per unit latent RMSE 2.0; TAESD's image is 0.3 from the SD-VAE's, the FP16 SD-VAE's 0.01
DECODER_QUALITY = {"reference": {"kind": "sd", "precision": "fp32"}, "gain": 2.0, "n": 4,
                   "rows": [{"kind": "sd", "precision": "fp32", "error": 0.0},
                            {"kind": "sd", "precision": "fp16", "error": 0.01},
                            {"kind": "taesd", "precision": "fp32", "error": 0.3},
                            {"kind": "taesd", "precision": "fp16", "error": 0.3}]}


def _decoder(kind):
    return {"kind": kind, "graph": f"decoder_{kind}", "scaling_factor": 0.18215 if kind == "sd" else 1.0,
            "scale_folded": True, "latent": [4, 32, 32], "image": [3, 256, 256], "params": 1, "source": "test"}


def synthetic_bundle(tmp_path, kinds=("sd", "taesd"), decoder_quality=DECODER_QUALITY, int8_converts=False,
                     records=None):
    """A manifest with only what the planner reads: decoders, and an fp16 variant that converted the
    SD-VAE's graph (not TAESD's) beside an int8 one that lists both decoders as their FP32 files
    (the "cpu" flavour) or, with int8_converts, has its own (FP16) decoders (the "trt" flavour)."""
    graphs = {f"decoder_{k}": {**decoder_spec(k, (4, 32, 32), (3, 256, 256)).to_dict(), "external_data": None}
              for k in kinds}
    fp16 = {name: {"file": f"fp16/{g['file']}" if name == "decoder_sd" else g["file"]} for name, g in graphs.items()}
    int8 = {name: {"file": f"int8/{g['file']}" if int8_converts else g["file"]} for name, g in graphs.items()}
    data = {"decoders": {k: _decoder(k) for k in kinds}, "graphs": graphs,
            "precisions": {"fp16": {"graphs": fp16}, "int8": {"graphs": int8}}}
    for precision, recorded in (records or {}).items():      # quantize's record: {graph: precision}
        data["precisions"][precision]["decoder_precisions"] = recorded
    quality = {"format": FORMAT, "held_out": {"n": 4, "seed": 0, "teacher": "t"}, "rows": ROWS}
    if decoder_quality is not None:
        quality["decoders"] = decoder_quality
    write_json_atomic(tmp_path / QUALITY, quality)
    return Bundle(tmp_path, data)


def test_decoder_precisions_follow_the_variants_graphs(tmp_path):
    m = synthetic_bundle(tmp_path)
    assert decoder_precisions(m, "sd") == ("fp32", "fp16")
    assert decoder_precisions(m, "taesd") == ("fp32",)          # no fp16 graph of it: the fp16 row is dropped
    trt = synthetic_bundle(tmp_path, int8_converts=True)
    assert decoder_precisions(trt, "sd") == ("fp32", "fp16")    # int8's FP16 decoder: the same precision
    assert decoder_precisions(trt, "taesd") == ("fp32", "int8")  # its only FP16 decoder


def test_candidates_are_rows_times_decoders_with_image_space_errors(tmp_path):
    got = {c.name: c for c in load_candidates(synthetic_bundle(tmp_path))}
    assert sorted(got) == ["a-fp32+sd", "a-fp32+sd-fp16", "a-fp32+taesd", "a-int8+sd", "a-int8+sd-fp16", "a-int8+taesd"]
    assert got["a-fp32+sd"].error == pytest.approx(0.1)                          # gain x 0.05, exact decoder
    assert got["a-fp32+sd-fp16"].error == pytest.approx(math.hypot(0.1, 0.01))
    assert got["a-int8+taesd"].error == pytest.approx(math.hypot(0.16, 0.3))
    c = got["a-int8+sd-fp16"]
    assert (c.precision, c.decoder, c.decoder_precision, c.lengths) == ("int8", "sd", "fp16", (8, 8))


def test_latents_only_and_one_decoder_kind(tmp_path):
    m = synthetic_bundle(tmp_path)
    assert [(c.name, c.decoder, c.error) for c in load_candidates(m, decode=False)] == \
        [("a-fp32", None, 0.05), ("a-int8", None, 0.08)]
    assert [c.name for c in load_candidates(m, decoders=["taesd"])] == ["a-fp32+taesd", "a-int8+taesd"]
    with pytest.raises(BundleError, match="no 'vq' decoder; expected one of"):
        load_candidates(m, decoders=["vq"])


def test_one_decoder_without_quality_only_adds_its_cost(tmp_path):
    got = load_candidates(synthetic_bundle(tmp_path, kinds=("taesd",), decoder_quality=None))
    assert [(c.name, c.error, c.decoder) for c in got] == [("a-fp32+taesd", 0.05, "taesd"), ("a-int8+taesd", 0.08, "taesd")]


def test_two_decoders_without_quality_are_refused(tmp_path):
    m = synthetic_bundle(tmp_path, decoder_quality=None)
    with pytest.raises(ConfigError, match=r"decodes with \['sd', 'taesd'\] but its quality table has no decoder quality"):
        load_candidates(m)
    # one chosen: its cost only, at each precision the bundle has it in (no decoder errors to tell them apart)
    chosen = load_candidates(m, decoders=["sd"])
    assert sorted((c.precision, c.decoder, c.decoder_precision) for c in chosen) == [
        ("fp32", "sd", "fp16"), ("fp32", "sd", "fp32"), ("int8", "sd", "fp16"), ("int8", "sd", "fp32")]
    assert {c.error for c in chosen if c.precision == "fp32"} == {0.05}


@pytest.mark.parametrize("bad,match", [
    ({"rows": []}, "expected decoders = "),
    ({"gain": "x", "rows": []}, "expected decoders = "),
    ({"gain": 1.0, "rows": [{"kind": "vq", "precision": "fp32", "error": 0.0}]}, r"expected decoder quality for one of"),
    ({"gain": float("nan"), "rows": [{"kind": "sd", "precision": "fp32", "error": 0.0}]}, "finite non-negative"),
])
def test_bad_decoder_quality_is_one_line(tmp_path, bad, match):
    with pytest.raises(ConfigError, match=match):
        load_candidates(synthetic_bundle(tmp_path, decoder_quality=bad))


def test_a_pixel_bundle_has_no_decoder_axis(tmp_path):
    m = Bundle(tmp_path, {"graphs": {}})
    write_json_atomic(tmp_path / QUALITY, {"format": FORMAT, "rows": ROWS})
    assert [c.decoder for c in load_candidates(m)] == [None, None]
    with pytest.raises(BundleError, match="no decoder stage"):
        load_candidates(m, decode=True)


# -- the profile's decoders section ---------------------------------------------------------------

def _timing(ms):
    return {"median_ms": ms, "p90_ms": ms * 1.1, "p99_ms": ms * 1.2}


def test_decode_cost_interpolates_between_profiled_batches():
    prof = {"decoders": {"fp32": {"1": {"sd": _timing(100.0)}, "8": {"sd": _timing(660.0)}}}}
    cost = decode_cost(prof)
    assert cost("fp32", "sd", 1) == 100.0
    assert cost("fp32", "sd", 4) == pytest.approx(100.0 + 560.0 * 3 / 7)
    assert cost("fp32", "sd", 16) == pytest.approx(660.0 * 2)                   # beyond: proportional
    with pytest.raises(ConfigError, match=r"profile has no fp16 decoder timings; expected one of \['fp32'\]"):
        cost("fp16", "sd", 1)
    with pytest.raises(ConfigError, match="profile has no decoder timings; expected one taken with them"):
        decode_cost({})("fp32", "sd", 1)


@pytest.mark.parametrize("decoders,where", [
    ({"fp32": {"1": {"sd": _timing(float("nan"))}}}, "decoders.fp32.1.sd.median_ms"),
    ({"fp32": {"0": {"sd": _timing(1.0)}}}, "decoders.fp32.0"),
    ({"fp32": {}}, "decoders.fp32"),
    ([1], "decoders"),
])
def test_a_profile_with_bad_decoder_timings_is_refused(tmp_path, decoders, where):
    prof = {"format": PROFILE_FORMAT, "calls": {"fp32": {"1": {"8": _timing(1.0)}}}, "decoders": decoders}
    write_json_atomic(tmp_path / "profile" / "dev.json", prof)
    with pytest.raises(ConfigError, match=f"found {where} = "):
        load_profile(Bundle(tmp_path, {}), device="dev")


def test_decoder_dtype_is_the_graphs_not_the_runs_precision(tmp_path):
    """Manifests from before the record: Bundle.decoder_dtype derives it, the one place that does."""
    cpu = synthetic_bundle(tmp_path)                         # int8 "cpu": the FP32 decoder files
    assert [cpu.decoder_dtype("sd", p) for p in ("fp32", "fp16", "int8")] == ["fp32", "fp16", "fp32"]
    assert cpu.decoder_dtype("taesd", "fp16") == "fp32"     # the fp16 variant kept TAESD's FP32 file
    trt = synthetic_bundle(tmp_path, int8_converts=True)     # int8 "trt": FP16 decoders, never INT8
    assert [trt.decoder_dtype(k, "int8") for k in ("sd", "taesd")] == ["fp16", "fp16"]


def test_the_recorded_decoder_precision_is_what_every_reader_reads(tmp_path):
    """quantize records each decoder graph's precision in the variant entry; the bundle, the
    planner's decoder axis and the Triton sampler's choice read that record, not file paths."""
    from odelt.runtime.budget.profile import decoder_precision_for

    # the record disagrees with the file layout on purpose: only a reader of the record passes
    m = synthetic_bundle(tmp_path, int8_converts=True,
                         records={"fp16": {"decoder_sd": "fp32", "decoder_taesd": "fp16"},
                                  "int8": {"decoder_sd": "fp32", "decoder_taesd": "fp32"}})
    assert [m.decoder_dtype(k, "fp16") for k in ("sd", "taesd")] == ["fp32", "fp16"]
    assert decoder_precisions(m, "sd") == ("fp32",)
    assert decoder_precisions(m, "taesd") == ("fp32", "fp16")
    assert decoder_precision_for(m, "taesd", "int8") == "fp32"
    assert decoder_precision_for(m, "sd", "fp16") == "fp32"
