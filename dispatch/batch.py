"""Batch files: many jobs from one JSONL or YAML file, run with live progress, results as JSONL.

A JSONL file has one entry per line; a YAML file is a list of entries, or a mapping with
``config`` (defaults for every entry) and ``jobs`` (the list). An entry is a prompt string, or a
mapping with ``prompt`` (or ``prompts`` for a multi-run in one session) and optionally
``session_id`` (continue that session), ``job_id``, ``labels``, ``timeout_s``, ``queue``,
``priority``, ``config`` (a mapping of AgentConfig fields) or AgentConfig fields at top level
(``model: gpt-5``), which override the batch's config for that entry.

``run_batch`` is what ``rho-agent dispatch FILE`` calls: the CLI only parses flags and draws.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

from dispatch.errors import JobSpecError
from dispatch.info import JobInfo
from dispatch.job import Job
from dispatch.spec import JobSpec, build_spec
from rho_agent.config import AgentConfig
from rho_agent.errors import ConfigError
from rho_agent.events import RunResult

if TYPE_CHECKING:
    from dispatch.dispatcher import Dispatcher

_JOB_KEYS = frozenset(
    {"prompt", "prompts", "session_id", "job_id", "labels", "timeout_s", "queue", "priority"}
)
_OPTION_KEYS = ("labels", "timeout_s", "queue", "priority")
_CONFIG_KEYS = frozenset(item.name for item in fields(AgentConfig))


@dataclass
class BatchProgress:
    """Where a batch stands; passed to the progress callback at every poll."""

    total: int
    completed: int = 0
    failed: int = 0
    running: int = 0
    queued: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    def add_usage(self, info: JobInfo) -> None:
        """Count a job's tokens and cost (finished jobs, or running ones for a live view)."""
        self.input_tokens += info.input_tokens
        self.output_tokens += info.output_tokens
        self.cost_usd += info.cost_usd


@dataclass
class BatchOutcome:
    """The finished batch: final progress and every result in submission order."""

    progress: BatchProgress
    jobs: list[Job] = field(default_factory=list)
    results: list[RunResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.progress.failed == 0


# -- loading ----------------------------------------------------------------------------------


def load_batch(path: str | Path, config: AgentConfig | None = None) -> list[JobSpec]:
    """Read a JSONL (``.jsonl``) or YAML (``.yaml``/``.yml``) batch file into JobSpecs."""
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
    return [_entry_spec(entry, base, f"{file}:{where}", file.parent) for where, entry in entries]


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


# -- running ----------------------------------------------------------------------------------


def run_batch(
    dispatcher: Dispatcher,
    specs: list[JobSpec],
    *,
    on_progress: Callable[[BatchProgress], None] | None = None,
    output: IO[str] | None = None,
    poll_s: float = 0.5,
) -> BatchOutcome:
    """Submit ``specs``, report progress every ``poll_s`` seconds, write each result as a JSONL
    line to ``output`` as it finishes, and return every result in submission order."""
    jobs = dispatcher.submit_specs(specs)
    progress = BatchProgress(total=len(jobs))
    results: dict[int, RunResult] = {}
    pending = dict(enumerate(jobs))
    while pending:
        infos = dispatcher.infos([job.id for job in pending.values()])
        live = BatchProgress(total=progress.total)
        finished: dict[int, JobInfo] = {}
        for (index, _job), info in zip(list(pending.items()), infos, strict=True):
            if info is not None and info.finished:
                finished[index] = info
            elif info is not None:
                _count_live(live, info)
        _collect(dispatcher, pending, finished, results, progress, output)
        _report(on_progress, progress, live)
        if pending:
            time.sleep(poll_s)
    return BatchOutcome(progress, jobs, [results[index] for index in range(len(jobs))])


def _count_live(live: BatchProgress, info: JobInfo) -> None:
    if info.status == "running":
        live.running += 1
    else:
        live.queued += 1
    live.add_usage(info)


def _collect(
    dispatcher: Dispatcher,
    pending: dict[int, Job],
    finished: dict[int, JobInfo],
    results: dict[int, RunResult],
    progress: BatchProgress,
    output: IO[str] | None,
) -> None:
    if not finished:
        return
    done_jobs = [pending[index] for index in finished]
    for (index, info), result in zip(finished.items(), dispatcher.gather(done_jobs), strict=True):
        job = pending.pop(index)
        results[index] = result
        if result.status == "completed":
            progress.completed += 1
        else:
            progress.failed += 1
        progress.add_usage(info)
        if output is not None:
            output.write(json.dumps(result_line(index, job, info, result), ensure_ascii=False))
            output.write("\n")
            output.flush()


def _report(
    on_progress: Callable[[BatchProgress], None] | None,
    progress: BatchProgress,
    live: BatchProgress,
) -> None:
    if on_progress is None:
        return
    snapshot = BatchProgress(
        total=progress.total,
        completed=progress.completed,
        failed=progress.failed,
        running=live.running,
        queued=live.queued,
        input_tokens=progress.input_tokens + live.input_tokens,
        output_tokens=progress.output_tokens + live.output_tokens,
        cost_usd=progress.cost_usd + live.cost_usd,
    )
    on_progress(snapshot)


def result_line(index: int, job: Job, info: JobInfo, result: RunResult) -> dict[str, Any]:
    """One line of the results file."""
    return {
        "index": index,
        "job_id": job.id,
        "session_id": job.session_id,
        "status": result.status,
        "text": result.text,
        "usage": result.usage,
        "error": info.error,
        "labels": info.labels,
        "prompt": info.prompt,
        "worker": info.worker,
        "attempt": info.attempt,
    }
