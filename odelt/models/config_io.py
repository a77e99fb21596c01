"""Reading model configs from JSON files (the CLI's --config)."""

from __future__ import annotations

import json
from pathlib import Path

from odelt.errors import ConfigError


def read_config_file(path: str | Path) -> dict:
    """A JSON object of config fields (upstream's names); one-line errors for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: expected a JSON object, found invalid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: expected a JSON object (UTF-8 text), found binary content") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # accept a whole meta.json-style file too
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of config fields, found {type(data).__name__}")
    return data
