"""Model configuration (a frozen dataclass) and the named presets, as data."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from odelt.errors import ConfigError

# Field bounds checked before anything is allocated (DiT-XL is hidden 1152, depth 28, 32x32 latents):
# generous for real models, and a config asking for more fails in one line naming the field.
MAX_FIELD = {"input_size": 4096, "in_channels": 1024, "out_channels": 1024, "patch_size": 64,
             "hidden_size": 65536, "depth": 1024, "num_heads": 4096, "mlp_ratio": 64.0, "depth_group": 1024,
             "depth_min": 1024, "num_classes": 1_000_000, "frequency_embedding_size": 65536}
MAX_PARAMS = 2e10           # 80 GB of FP32 weights


@dataclass(frozen=True)
class DiTConfig:
    input_size: int = 32          # latent side; images are NCHW (B, in_channels, input_size, input_size)
    in_channels: int = 4
    out_channels: int = 4         # velocity channels; upstream has no learned sigma
    patch_size: int = 2
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    depth_group: int = 4          # G: blocks per group; a group's last block feeds the velocity sum
    depth_min: int = 4            # shortest trained length; trained lengths step by G up to depth
    num_classes: int = 1          # label embedding has num_classes + 1 rows; the null class = num_classes
    class_dropout_prob: float = 0.1   # training only
    frequency_embedding_size: int = 256
    ignore_dt: bool = False       # upstream flag: the model has no shortcut levels (dt_base forced to 0)

    def __post_init__(self) -> None:
        self._check_types()
        checks = [
            (self.hidden_size % self.num_heads == 0, "hidden_size divisible by num_heads"),
            (self.hidden_size % 4 == 0, "hidden_size divisible by 4 (2-D sin-cos positions)"),
            (self.input_size % self.patch_size == 0, "input_size divisible by patch_size"),
            (self.depth >= 1 and self.depth_group >= 1, "depth >= 1 and depth_group >= 1"),
            (1 <= self.depth_min <= self.depth, "1 <= depth_min <= depth"),
            (self.num_classes >= 1, "num_classes >= 1"),
            (self.frequency_embedding_size % 2 == 0, "an even frequency_embedding_size"),
        ]
        for ok, what in checks:
            if not ok:
                raise ConfigError(f"invalid model config: expected {what}, found {self}")
        if self.param_estimate() > MAX_PARAMS:
            raise ConfigError(f"invalid model config: hidden_size {self.hidden_size}, depth {self.depth} and "
                              f"mlp_ratio {self.mlp_ratio} make about {self.param_estimate():.3g} parameters; expected "
                              f"at most {MAX_PARAMS:.0e} (bounded before anything is allocated)")

    def param_estimate(self) -> float:
        """About how many parameters the model has (attention + MLP + adaLN per block): a bound
        checked before anything is built, so a config file cannot ask for terabytes."""
        d = float(self.hidden_size)
        return self.depth * (4 * d * d + 2 * self.mlp_ratio * d * d + 6 * d * d) + \
            (self.num_classes + 1 + self.depth) * d

    def _check_types(self) -> None:
        """Every field has its type (no bools for numbers, no strings) and a usable value, so that a
        config file with `num_heads: 0` or `mlp_ratio: "four"` fails here, in one line."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "int":
                ok, expected = _is_int(v) and v >= 1, "an integer >= 1"
            elif f.name == "class_dropout_prob":
                ok, expected = _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"
            elif f.type == "float":
                ok, expected = _is_number(v) and v > 0, "a finite number > 0"
            else:
                ok, expected = isinstance(v, bool), "true or false"
            if ok and f.name in MAX_FIELD and v > MAX_FIELD[f.name]:
                ok, expected = False, f"an integer in 1..{MAX_FIELD[f.name]}" if f.type == "int" else \
                    f"{expected} and at most {MAX_FIELD[f.name]}"
            if not ok:
                raise ConfigError(f"invalid model config: {f.name}: expected {expected}, found {v!r:.80}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def lengths(self) -> tuple[int, ...]:
        """The lengths upstream trains: depth_min + G*k up to depth."""
        return tuple(range(self.depth_min, self.depth + 1, self.depth_group))

    @property
    def group_ends(self) -> tuple[int, ...]:
        """The lengths at which a group ends (G, 2G, ... <= depth): each has no dead block."""
        return tuple(range(self.depth_group, self.depth + 1, self.depth_group))

    @property
    def export_lengths(self) -> tuple[int, ...]:
        """The lengths an export gets when none are asked for: the trained lengths and the group ends.

        The trained lengths are what the model was taught to serve (learned schedules use only them);
        when depth_min is not a multiple of G some of them end mid-group (their trailing blocks are
        dead) or before the first group end (no live block: the velocity comes from the conditioning
        alone). The group ends add the lengths with no dead block, one per live depth, so every amount
        of work the model can do is offered even where no trained length does it without waste."""
        return tuple(sorted(set(self.lengths) | set(self.group_ends)))

    def live_depth(self, length: int) -> int:
        """Blocks that can affect the output at `length`: up to the last group end <= length (0 below
        the first group end, where the velocity sum V stays zero)."""
        self.check_length(length)
        return (length // self.depth_group) * self.depth_group

    def check_length(self, length: int) -> None:
        if not 1 <= int(length) <= self.depth:
            raise ConfigError(f"length must be in [1, {self.depth}], found {length}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, strict: bool = True) -> DiTConfig:
        """Build from a dict; strict=False ignores keys we do not model (upstream's training knobs)."""
        if not isinstance(d, dict):
            raise ConfigError(f"model config must be a JSON object, found {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if strict and unknown:
            raise ConfigError(f"unknown model config keys {unknown}; expected some of {sorted(names)}")
        kwargs = {k: v for k, v in d.items() if k in names}
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"invalid model config: {e}") from None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Presets, as upstream names them (README commands / train.py defaults). num_classes=1 is CelebA's
# unconditional setting; ImageNet models use num_classes=1000.
PRESETS: dict[str, DiTConfig] = {
    "DiT-B/2": DiTConfig(hidden_size=768, depth=12, num_heads=12, depth_group=4, depth_min=4),
    "DiT-XL/2": DiTConfig(hidden_size=1152, depth=28, num_heads=16, depth_group=8, depth_min=12,
                          num_classes=1000),
    "DiT-S/2": DiTConfig(hidden_size=384, depth=12, num_heads=6, depth_group=4, depth_min=4),
    # The bundled demo model: 8x8 digits, 1 channel, 10 classes, lengths 2/4/6/8.
    "digits": DiTConfig(input_size=8, in_channels=1, out_channels=1, patch_size=2, hidden_size=64,
                        depth=8, num_heads=4, depth_group=2, depth_min=2, num_classes=10),
    # The same DiT on the 4x4x4 latents of the digits autoencoder (32x32 images, 8x downsampling);
    # patch 1 keeps 16 tokens, as the pixel model has.
    "digits-latent": DiTConfig(input_size=4, in_channels=4, out_channels=4, patch_size=1, hidden_size=64,
                               depth=8, num_heads=4, depth_group=2, depth_min=2, num_classes=10),
}


def preset(name: str) -> DiTConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]
