"""Check every config.pbtxt of a repository against Triton's own schema.

    python -m odelt.serving.validate REPO      # prints one line per model; exit 1 on the first bad one

Parses each file with protobuf's text_format into `ModelConfig` from tritonclient's
`model_config_pb2` (misspelt fields, wrong types and unknown enum values are rejected), then checks
what the schema cannot: the folder is named like the model and the model file is where it points.
"""

from __future__ import annotations

import sys
from pathlib import Path

from odelt.errors import ConfigError

MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}


def check_config(path: Path) -> object:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ConfigError(f"{path}: not a valid Triton model config ({e})") from None
    if config.name != path.parent.name:
        raise ConfigError(f"{path}: model name {config.name!r} differs from its folder {path.parent.name!r}")
    if config.backend == "python":
        file_name = "model.py"
    else:
        file_name = config.default_model_filename or MODEL_FILES.get(config.platform, "")
    if not (path.parent / "1" / file_name).is_file():
        raise ConfigError(f"{path}: expected model file 1/{file_name}, found none")
    return config


def check_repository(repo: Path) -> list[str]:
    configs = sorted(Path(repo).glob("*/config.pbtxt"))
    if not configs:
        raise ConfigError(f"{repo}: expected a model repository (*/config.pbtxt), found none")
    lines = []
    for path in configs:
        c = check_config(path)
        kind = getattr(c, "platform") or getattr(c, "backend")
        lines.append(f"{path.parent.name}: {kind}, max_batch_size {getattr(c, 'max_batch_size')}")
    return lines


def main(argv: list[str]) -> int:
    try:
        for line in check_repository(Path(argv[0])):
            print(line)
    except ConfigError as e:
        print(f"odelt-validate: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
