"""The VAEs of the decoder stage, built as diffusers' own `AutoencoderKL` ("sd") and
`AutoencoderTiny` ("taesd") from a config and a weights file, checked key by key, and checked
against the DiT whose latents they decode.

`--vae KIND:PATH`: PATH is a diffusers folder (config.json + diffusion_pytorch_model.safetensors,
or for "sd" upstream's diffusion_flax_model.msgpack) or one weights file; a lone file takes the
config.json beside it, or else the kind's standard configuration (SD-VAE ft-MSE / TAESD).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from odelt.errors import CheckpointError, ConfigError
from odelt.fileio import file_hash, read_json
from odelt.latent.weights import MSGPACK, SAFETENSORS, Weights, read_weights
from odelt.models.config import DiTConfig


@dataclass(frozen=True)
class Kind:
    name: str
    class_name: str                           # the diffusers class
    formats: tuple[str, ...]                  # weight file formats it reads
    standard: dict                            # the configuration used when PATH has no config.json
    decode_prefixes: tuple[str, ...]          # weights the decoder graph needs; the rest (encoder) is optional
    ignored_config: tuple[str, ...] = ()      # keys diffusers writes to config.json but does not take


KINDS: dict[str, Kind] = {
    "sd": Kind("sd", "AutoencoderKL", (SAFETENSORS, MSGPACK), {
        # stabilityai/sd-vae-ft-mse (the SD1 VAE; its decoder fine-tuned with MSE + 0.1 LPIPS)
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 2, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 256,
        "scaling_factor": 0.18215}, ("post_quant_conv.", "decoder.")),
    "taesd": Kind("taesd", "AutoencoderTiny", (SAFETENSORS,), {
        # madebyollin/taesd (the SD1 latent space; it decodes the scaled latent as is)
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "encoder_block_out_channels": [64] * 4,
        "decoder_block_out_channels": [64] * 4, "num_encoder_blocks": [1, 3, 3, 3], "num_decoder_blocks": [3, 3, 3, 1],
        "act_fn": "relu", "upsampling_scaling_factor": 2, "latent_magnitude": 3, "latent_shift": 0.5,
        "scaling_factor": 1.0}, ("decoder.",), ("block_out_channels", "force_upcast")),
}
WEIGHT_FILES = {SAFETENSORS: "diffusion_pytorch_model.safetensors", MSGPACK: "diffusion_flax_model.msgpack"}


def kind(name: str) -> Kind:
    if name not in KINDS:
        raise ConfigError(f"--vae: unknown VAE kind {name!r}; expected one of {sorted(KINDS)} (KIND:PATH)")
    return KINDS[name]


def parse_vae_option(text: str) -> tuple[str, str]:
    """'sd:/path/vae' -> ('sd', '/path/vae'); the kind is checked here, the path when loading."""
    name, sep, path = str(text).partition(":")
    if not sep or not path:
        raise ConfigError(f"--vae: expected KIND:PATH with KIND one of {sorted(KINDS)}, found {text!r}")
    return kind(name).name, path


def parse_vae_options(texts: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = tuple(parse_vae_option(t) for t in texts)
    kinds = [k for k, _ in out]
    dup = sorted({k for k in kinds if kinds.count(k) > 1})
    if dup:
        raise ConfigError(f"--vae: kind {dup[0]!r} given {kinds.count(dup[0])} times; expected each kind at most once")
    return out


@dataclass(frozen=True)
class Vae:
    """A loaded VAE: the diffusers model (eval, float32), where it came from, what it fits."""

    kind: str
    model: Any                       # diffusers AutoencoderKL | AutoencoderTiny (an nn.Module, untyped)
    config: dict                     # what the model was built from (the kind's keys only)
    source: str                      # the PATH given, resolved
    weights: Path
    source_hash: str                 # weights file hash + config (see `source_hash`)
    spelling: str                    # attention key spelling the file used

    @property
    def scaling_factor(self) -> float:
        return float(self.model.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.model.config.latent_channels)

    @property
    def image_channels(self) -> int:
        return int(self.model.config.out_channels)

    @property
    def upscale(self) -> int:
        """Image side / latent side."""
        c = self.model.config
        if self.kind == "sd":
            return 2 ** (len(c.block_out_channels) - 1)
        return int(c.upsampling_scaling_factor) ** (len(c.num_decoder_blocks) - 1)

    @property
    def decode_params(self) -> int:
        """Parameters of the decode path (post_quant_conv + decoder for sd; the decoder for taesd)."""
        prefixes = KINDS[self.kind].decode_prefixes
        return sum(p.numel() for n, p in self.model.named_parameters() if n.startswith(prefixes))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """diffusers' own decode of a DiT latent: decode(z / scaling_factor).sample (the reference)."""
        with torch.no_grad():
            return self.model.decode(latent / self.scaling_factor).sample


def source_hash(weights: Path, config: dict) -> str:
    """The identity of a VAE: its weights file's hash and the config it is built with."""
    text = f"{file_hash(weights)}:{json.dumps(config, sort_keys=True)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _locate(k: Kind, path: Path) -> tuple[Path, Path | None]:
    """(weights file, config.json or None) for PATH."""
    if path.is_dir():
        found = [path / WEIGHT_FILES[f] for f in k.formats if (path / WEIGHT_FILES[f]).is_file()]
        if not found:
            want = " or ".join(WEIGHT_FILES[f] for f in k.formats)
            pickles = sorted(p.name for p in path.glob("*.bin"))
            extra = f" (pickled {pickles[0]} is not read)" if pickles else ""
            raise CheckpointError(f"--vae {k.name}: folder {path} has no {want}{extra}")
        weights = found[0]
    elif path.is_file():
        weights = path
    else:
        raise CheckpointError(f"--vae {k.name}: {path} not found; expected a diffusers folder or a weights file")
    config = weights.parent / "config.json"
    return weights, config if config.is_file() else None


def _config(k: Kind, file: Path | None) -> dict:
    """The constructor keywords: config.json's (checked against the class) or the standard ones."""
    if file is None:
        return dict(k.standard)
    data = read_json(file, CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object (a diffusers {k.class_name} config), "
                              f"found {type(data).__name__}")
    found = data.get("_class_name", k.class_name)
    if found != k.class_name:
        raise CheckpointError(f"{file}: is a {found} config; --vae {k.name} expects {k.class_name}")
    cls = _class(k)
    known = set(inspect.signature(cls).parameters)
    config = {key: v for key, v in data.items() if not key.startswith("_") and key not in k.ignored_config}
    unknown = sorted(set(config) - known)
    if unknown:
        raise CheckpointError(f"{file}: unknown {k.class_name} config key {unknown[0]!r}; expected some of "
                              f"{sorted(known)}")
    defaults = {n: p.default for n, p in inspect.signature(cls).parameters.items()}
    for key, value in config.items():
        expected = _config_type_error(defaults.get(key), value)
        if expected:
            raise CheckpointError(f"{file}: {key}: expected {expected}, found {value!r:.80}")
    return config


MAX_VAE_DIM = 1 << 16        # channels, sizes, layer counts: a config past this is not a real VAE


def _config_type_error(default: Any, value: Any) -> str | None:
    """What a config value should be, judged by the constructor's default (None when it fits)."""
    def number(v: Any, whole: bool) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (whole and not isinstance(v, int)):
            return False
        return math.isfinite(v) and abs(v) <= MAX_VAE_DIM
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if number(value, True) else f"an integer of at most {MAX_VAE_DIM}"
    if isinstance(default, float):
        return None if number(value, False) else f"a finite number of at most {MAX_VAE_DIM}"
    if isinstance(default, (tuple, list)):
        inner = (lambda v: number(v, True)) if all(isinstance(d, int) for d in default) else \
            (lambda v: isinstance(v, type(default[0]))) if default else (lambda v: True)
        ok = isinstance(value, (list, tuple)) and len(value) <= 64 and all(inner(v) for v in value)
        return None if ok else f"a list like {list(default)}"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    return None


def _class(k: Kind) -> type:
    import diffusers

    return getattr(diffusers, k.class_name)


def _build(k: Kind, config: dict, where: Path) -> Any:
    try:
        model = _class(k)(**config)
    except Exception as e:          # the config is file data: any constructor failure is a bad config
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{where}: cannot build {k.class_name} from this config ({reason})") from None
    return model.eval()


def _load_state(k: Kind, model: Any, w: Weights, what: str, encoder: bool = False) -> None:
    """Every decode weight (with `encoder`, every weight) present with its shape, nothing the model
    lacks; then load."""
    expected = model.state_dict()
    unexpected = sorted(set(w.state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{w.path}: unexpected weight {unexpected[0]!r} for {what}"
                              f"{f' (and {len(unexpected) - 1} more)' if len(unexpected) > 1 else ''}")
    required = ("",) if encoder else k.decode_prefixes
    missing = [n for n in expected if n.startswith(required) and n not in w.state]
    if missing:
        raise CheckpointError(f"{w.path}: missing weight {missing[0]!r} (expected shape "
                              f"{tuple(expected[missing[0]].shape)}) for {what}")
    for name, t in w.state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{w.path}: weight {name!r} has shape {tuple(t.shape)}, expected "
                                  f"{tuple(expected[name].shape)} for {what}; does the config match the file?")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{w.path}: weight {name!r} has non-finite values; expected finite numbers")
    model.load_state_dict(w.state, strict=False)


def load_vae(kind_name: str, path: str | Path, encoder: bool = False) -> Vae:
    """Build the diffusers VAE of `kind_name` from PATH (folder or file); see the module doc.
    encoder: its weights are required too (an autoencoder that encodes training data)."""
    k = kind(kind_name)
    path = Path(path).expanduser().resolve()
    weights_file, config_file = _locate(k, path)
    config = _config(k, config_file)
    model = _build(k, config, config_file or weights_file)
    w = read_weights(weights_file, k.formats)
    what = f"{k.class_name} {'(' + config_file.name + ')' if config_file else '(the standard ' + k.name + ' config)'}"
    _load_state(k, model, w, what, encoder)
    return Vae(k.name, model, config, str(path), weights_file, source_hash(weights_file, config), w.spelling)


def check_fits(vae: Vae, cfg: DiTConfig) -> None:
    """The VAE decodes this DiT's latents: same channels, a usable scale, no latent normalisation."""
    c = vae.model.config
    if vae.latent_channels != cfg.out_channels or vae.latent_channels != cfg.in_channels:
        pixel = " (a pixel-space model has no decoder stage)" if cfg.out_channels in (1, 3) else ""
        raise ConfigError(f"--vae {vae.kind}: the VAE's latent_channels is {vae.latent_channels}, but the DiT's "
                          f"in/out_channels are {cfg.in_channels}/{cfg.out_channels}; expected them equal{pixel}")
    s = c.scaling_factor
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s) or s <= 0:
        raise ConfigError(f"--vae {vae.kind}: scaling_factor must be a finite number > 0, found {s!r}")
    if vae.kind == "taesd" and float(s) != 1.0:
        raise ConfigError(f"--vae taesd: TAESD decodes the DiT's scaled latent as is, so expected scaling_factor "
                          f"1.0, found {s!r}")
    for key in ("shift_factor", "latents_mean", "latents_std"):
        value = getattr(c, key, None)
        if value not in (None, 0, 0.0):
            raise ConfigError(f"--vae {vae.kind}: {key} is {value!r}; expected none (the SD latent space is "
                              "only scaled, not shifted or normalised)")
