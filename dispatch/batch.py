"""Batch files: many jobs from one JSONL or YAML file, run with live progress, results as JSONL.

A JSONL file has one entry per line; a YAML file is a list of entries, or a mapping with
``config`` (defaults for every entry) and ``jobs`` (the list). An entry is a prompt string, or a
mapping with ``prompt`` (or ``prompts`` for a multi-run in one session) and optionally
``session_id`` (continue that session), ``job_id``, ``labels``, ``timeout_s``, ``queue``,
``priority``, ``output_schema`` (a JSON schema, inline or the path of a ``.json`` file next to
the batch file: the answer is then typed, see ``rho_agent.output``), ``max_cost_usd`` and
``max_tokens`` (that job's budget), ``config`` (a mapping of AgentConfig fields) or AgentConfig
fields at top level (``model: gpt-5``), which override the batch's config for that entry. A YAML
mapping may also hold ``budget`` (``max_cost_usd`` and/or ``max_tokens`` for the whole batch)
and ``rate_limits`` (the batch's own, see docs/budgets.md).

Running a batch (progress, results, batch ids, resume) is ``dispatch.batch_run``; ``run_batch``
and its types are re-exported here.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dispatch.batch_run import (
    BatchOutcome,
    BatchProgress,
    BatchRun,
    new_batch_id,
    result_line,
    run_batch,
)
from dispatch.errors import JobSpecError
from dispatch.spec import JobSpec, build_spec, describe
from rho_agent.config import AgentConfig
from rho_agent.errors import ConfigError
from rho_agent.output import load_schema_file

__all__ = [
    "BatchOutcome",
    "BatchProgress",
    "BatchRun",
    "load_batch",
    "result_line",
    "run_batch",
]

_OPTION_KEYS = ("labels", "timeout_s", "queue", "priority", "max_cost_usd", "max_tokens")
_JOB_KEYS = frozenset({"prompt", "prompts", "session_id", "job_id", "output_schema", *_OPTION_KEYS})
_BATCH_KEYS = frozenset({"config", "jobs", "budget", "rate_limits"})
_CONFIG_KEYS = frozenset(item.name for item in fields(AgentConfig))


# -- loading ----------------------------------------------------------------------------------


def load_batch(
    path: str | Path,
    config: AgentConfig | None = None,
    *,
    output_schema: dict[str, Any] | None = None,
) -> list[JobSpec]:
    """Read a JSONL (``.jsonl``) or YAML (``.yaml``/``.yml``) batch file into JobSpecs.

    ``output_schema`` (a JSON schema) types the answer of every entry that names none.
    """
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobSpecError(f"cannot read batch file {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise JobSpecError(f"cannot read batch file {file}: it is not UTF-8 text") from None
    base = config or AgentConfig()
    batch: dict[str, Any] = {}
    if file.suffix.lower() == ".jsonl":
        entries = _jsonl_entries(text, file)
    elif file.suffix.lower() in (".yaml", ".yml"):
        entries, base, batch = _yaml_entries(text, file, base)
    else:
        raise JobSpecError(f"batch file {file} must end in .jsonl, .yaml or .yml")
    if not entries:
        raise JobSpecError(f"batch file {file} has no entries")
    specs = [_entry_spec(entry, base, f"{file}:{where}", file.parent) for where, entry in entries]
    if output_schema is not None:
        specs = [
            spec if spec.output_schema is not None else _with_schema(spec, output_schema)
            for spec in specs
        ]
    return with_batch(specs, **batch)


def with_batch(
    specs: list[JobSpec],
    *,
    batch_id: str | None = None,
    max_cost_usd: float | None = None,
    max_tokens: int | None = None,
    rate_limits: list[dict[str, Any]] | None = None,
) -> list[JobSpec]:
    """The specs as one batch: one batch id (``batch_id``, else the specs' own, else a new one),
    the batch's shared budget and its rate limits."""
    found = next((spec.batch_id for spec in specs if spec.batch_id), None)
    update: dict[str, Any] = {"batch_id": batch_id or found or new_batch_id()}
    if max_cost_usd is not None:
        update["batch_max_cost_usd"] = max_cost_usd
    if max_tokens is not None:
        update["batch_max_tokens"] = max_tokens
    if rate_limits is not None:
        update["rate_limits"] = rate_limits
    try:
        return [JobSpec.model_validate({**spec.model_dump(), **update}) for spec in specs]
    except ValidationError as exc:
        raise JobSpecError(describe(exc, "batch")) from None


def _with_schema(spec: JobSpec, schema: dict[str, Any]) -> JobSpec:
    try:
        return JobSpec.model_validate({**spec.encode(), "output_schema": schema})
    except ValidationError as exc:
        raise JobSpecError(describe(exc, "output schema")) from None


def load_schema(value: Any, folder: Path, where: str) -> dict[str, Any]:
    """An output schema given inline (a mapping) or as the path of a JSON file (its content)."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise JobSpecError(f"{where}: output_schema must be a JSON schema or a .json file path")
    try:
        return load_schema_file((folder / value).expanduser())
    except ConfigError as exc:
        raise JobSpecError(f"{where}: {exc}") from None


def _jsonl_entries(text: str, file: Path) -> list[tuple[str, Any]]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise JobSpecError(f"{file}: line {number} is not valid JSON: {exc.msg}") from None
    return entries


def _yaml_entries(
    text: str, file: Path, base: AgentConfig
) -> tuple[list[tuple[str, Any]], AgentConfig, dict[str, Any]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise JobSpecError(f"batch file {file} is not valid YAML: {exc}") from None
    batch: dict[str, Any] = {}
    if isinstance(data, dict):
        unknown = set(data) - _BATCH_KEYS
        if unknown or not isinstance(data.get("jobs"), list):
            raise JobSpecError(
                f"batch file {file}: a mapping needs 'jobs' (a list) and optionally 'config', "
                f"'budget', 'rate_limits' (unexpected: {sorted(unknown) or 'no jobs list'})"
            )
        base = _with_overrides(base, data.get("config") or {}, str(file), file.parent)
        batch = _batch_options(data, file)
        data = data["jobs"]
    if not isinstance(data, list):
        raise JobSpecError(f"batch file {file} must hold a list of entries (or config + jobs)")
    entries = [(f"entry {index}", entry) for index, entry in enumerate(data, start=1)]
    return entries, base, batch


def _batch_options(data: dict[str, Any], file: Path) -> dict[str, Any]:
    budget = data.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"max_cost_usd", "max_tokens"}:
        raise JobSpecError(
            f"batch file {file}: 'budget' takes max_cost_usd and/or max_tokens, e.g. "
            "budget: {max_cost_usd: 5}"
        )
    options = dict(budget)
    if "rate_limits" in data:
        options["rate_limits"] = data["rate_limits"]
    return options


def _entry_spec(entry: Any, base: AgentConfig, where: str, folder: Path) -> JobSpec:
    if isinstance(entry, str):
        entry = {"prompt": entry}
    if not isinstance(entry, dict):
        raise JobSpecError(f"{where}: an entry must be a prompt string or a mapping")
    unknown = set(entry) - _JOB_KEYS - _CONFIG_KEYS - {"config"}
    if unknown:
        known = sorted(_JOB_KEYS | _CONFIG_KEYS | {"config"})
        raise JobSpecError(f"{where}: unknown key(s) {sorted(unknown)}; known keys: {known}")
    prompts = entry.get("prompts", entry.get("prompt"))
    if not prompts or not isinstance(prompts, str | list):
        raise JobSpecError(f"{where}: give 'prompt' (text) or 'prompts' (a list of texts)")
    entry_config = entry.get("config") or {}
    if not isinstance(entry_config, dict):
        raise JobSpecError(f"{where}: 'config' must be a mapping of AgentConfig fields")
    overrides = {key: entry[key] for key in entry if key in _CONFIG_KEYS}
    overrides.update(entry_config)
    config = _with_overrides(base, overrides, where, folder)
    options = {key: entry[key] for key in _OPTION_KEYS if key in entry}
    if entry.get("output_schema") is not None:
        options["output_schema"] = load_schema(entry["output_schema"], folder, where)
    try:
        return build_spec(
            prompts,
            config,
            job_id=entry.get("job_id"),
            session_id=entry.get("session_id"),
            continue_session=entry.get("session_id") is not None,
            **options,
        )
    except JobSpecError as exc:
        raise JobSpecError(f"{where}: {exc}") from None


def _with_overrides(
    base: AgentConfig, overrides: dict[str, Any], where: str, folder: Path
) -> AgentConfig:
    if not overrides:
        return base
    if not isinstance(overrides, dict):
        raise JobSpecError(f"{where}: 'config' must be a mapping of AgentConfig fields")
    try:
        config = AgentConfig.from_dict({**base.to_dict(), **overrides}, source=where)
    except ConfigError as exc:
        raise JobSpecError(str(exc)) from None
    config.config_dir = (
        str(folder) if "system_prompt" in overrides or not base.config_dir else base.config_dir
    )
    return config
