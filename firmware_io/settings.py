"""Settings as pydantic models, shared by every layer: the strict base (a misspelt key is an error), YAML
loading kept apart from validation, and one error format that names the key at fault."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from firmware_io.errors import ConfigError

__all__ = ["Strict", "load_yaml", "validated"]


class Strict(BaseModel):
    """A settings model that refuses keys it does not know."""

    model_config = ConfigDict(extra="forbid")


def validated(model_cls: type[BaseModel], values: dict, source: str):
    """Validate settings with pydantic; a typo or a bad value is an error naming the key."""
    try:
        return model_cls.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: {problems}") from exc


def load_yaml(path: Path) -> dict:
    """A YAML file's top-level mapping; a missing, unreadable or malformed file is a named error."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return loaded
