"""Batch files: many jobs from one JSONL or YAML file, run with live progress, results as JSONL.

A JSONL file has one entry per line; a YAML file is a list of entries, or a mapping with
``config`` (defaults for every entry) and ``jobs`` (the list). An entry is a prompt string, or a
mapping with ``prompt`` (or ``prompts`` for a multi-run in one session) and optionally
``session_id`` (continue that session), ``job_id``, ``labels``, ``timeout_s``, ``queue``,
``priority``, ``output_schema`` (a JSON schema, inline or the path of a ``.json`` file next to
the batch file: the answer is then typed, see ``rho_agent.output``), ``config`` (a mapping of
AgentConfig fields) or AgentConfig fields at top level (``model: gpt-5``), which override the
batch's config for that entry.

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

from dispatch.batch_run import BatchOutcome, BatchProgress, BatchRun, result_line, run_batch
from dispatch.errors import JobSpecError
from dispatch.spec import JobSpec, build_spec, describe
from rho_agent.config import AgentConfig
from rho_agent.errors import ConfigError

__all__ = [
    "BatchOutcome",
    "BatchProgress",
    "BatchRun",
    "load_batch",
    "result_line",
    "run_batch",
]

_JOB_KEYS = frozenset(
    {
        "prompt", "prompts", "session_id", "job_id", "labels", "timeout_s", "queue", "priority",
        "output_schema",
    }
)  # fmt: skip
_OPTION_KEYS = ("labels", "timeout_s", "queue", "priority")
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
    base = config or AgentConfig()
    if file.suffix.lower() == ".jsonl":
        entries = _jsonl_entries(text, file)
    elif file.suffix.lower() in (".yaml", ".yml"):
        entries, base = _yaml_entries(text, file, base)
    else:
        raise JobSpecError(f"batch file {file} must end in .jsonl, .yaml or .yml")
    if not entries:
        raise JobSpecError(f"batch file {file} has no entries")
    specs = [_entry_spec(entry, base, f"{file}:{where}", file.parent) for where, entry in entries]
    if output_schema is None:
        return specs
    return [
        spec if spec.output_schema is not None else _with_schema(spec, output_schema)
        for spec in specs
    ]


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
    file = (folder / value).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise JobSpecError(f"{where}: cannot read output schema {file}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise JobSpecError(f"{where}: output schema {file} is not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise JobSpecError(f"{where}: output schema {file} must hold a JSON object")
    return data


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
) -> tuple[list[tuple[str, Any]], AgentConfig]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise JobSpecError(f"batch file {file} is not valid YAML: {exc}") from None
    if isinstance(data, dict):
        unknown = set(data) - {"config", "jobs"}
        if unknown or not isinstance(data.get("jobs"), list):
            raise JobSpecError(
                f"batch file {file}: a mapping needs 'jobs' (a list) and optionally 'config' "
                f"(unexpected: {sorted(unknown) or 'no jobs list'})"
            )
        base = _with_overrides(base, data.get("config") or {}, str(file), file.parent)
        data = data["jobs"]
    if not isinstance(data, list):
        raise JobSpecError(f"batch file {file} must hold a list of entries (or config + jobs)")
    return [(f"entry {index}", entry) for index, entry in enumerate(data, start=1)], base


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
    overrides = {key: entry[key] for key in entry if key in _CONFIG_KEYS}
    overrides.update(entry.get("config") or {})
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
    base_dir = base.extras.get("_config_dir")
    config.extras["_config_dir"] = (
        str(folder) if "system_prompt" in overrides or not base_dir else base_dir
    )
    return config
