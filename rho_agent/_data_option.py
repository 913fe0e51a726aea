"""Settings given as data (prices, rate limits, a Daytona backend): read from inline JSON or a
YAML/JSON file path, and what is wrong in them said in one line."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import ValidationError

from rho_agent.errors import ConfigError


def load_data_option(
    value: str, *, source: str, what: str, inline: tuple[str, ...]
) -> tuple[object, str]:
    """The data ``value`` holds (JSON when it starts with one of ``inline``, else the file it
    names), and how to name where it came from in an error about that data."""
    text = value.strip()
    if text.startswith(inline):
        try:
            return json.loads(text), source
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source} is not valid JSON: {exc}") from None
    try:
        data = yaml.safe_load(Path(text).expanduser().read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{source}={text!r}: no such file; give a YAML/JSON file of {what} or inline JSON"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{source}={text!r}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}={text!r}: the file is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}={text!r} is not valid YAML: {exc}") from None
    return data, f"{source} file {text!r}"


def validation_problems(exc: ValidationError, whole: str) -> str:
    """Every problem pydantic found, ``field: message`` joined by ``; `` (``whole`` names the
    value itself when the problem is not in one field)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or whole}: {error['msg']}"
        for error in exc.errors()
    )
