"""The ``-o`` results file: written whole or not at all, so a failed run never wipes one.

Lines go to a temporary file next to the target, renamed over it by ``commit``. Lines the target
already holds for the same batch are kept unless a new line for the same entry replaces them, so
``--resume`` and ``rho-agent results`` add to a file instead of starting it again. ``abandon``
(the run failed) leaves the target untouched: the new lines, if any, stay in the temporary file,
whose path it returns.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from rho_agent.errors import ConfigError


class ResultsFile:
    """A results file being (re)written for batch ``batch_id``."""

    def __init__(self, path: Path, batch_id: str) -> None:
        self.path = path
        self.batch_id = batch_id
        self.previous = _batch_lines(path, batch_id)
        try:
            handle, temp = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=".partial", dir=path.parent or Path(".")
            )
        except OSError as exc:
            raise ConfigError(f"cannot write results next to {path}: {exc.strerror}") from None
        self.temp = Path(temp)
        os.chmod(handle, _file_mode(path))  # mkstemp's 0600 would stick to the renamed file
        self.sink = _Tracking(os.fdopen(handle, "w", encoding="utf-8"))

    @property
    def completed(self) -> dict[int, dict[str, Any]]:
        """The entries the file already holds as completed (a resume skips them)."""
        return {i: line for i, line in self.previous.items() if line.get("status") == "completed"}

    def commit(self) -> None:
        """Add the previous lines no new line replaced, then rename over the target; with
        nothing new written the target stays as it was."""
        sink = self.sink
        if not sink.wrote:
            self.abandon()
            return
        for index in sorted(set(self.previous) - sink.indexes):
            sink.write(json.dumps(self.previous[index], ensure_ascii=False) + "\n")
        sink.close()
        os.replace(self.temp, self.path)

    def abandon(self) -> Path | None:
        """Leave the target as it was; the temporary file's path if it holds new lines."""
        sink = self.sink
        sink.close()
        if sink.indexes:
            return self.temp
        self.temp.unlink(missing_ok=True)
        return None


class _Tracking:
    """A text sink that remembers whether anything, and which entry indexes, were written."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.indexes: set[int] = set()
        self.wrote = False

    def write(self, text: str) -> int:
        self.wrote = self.wrote or bool(text)
        for line in text.splitlines():
            index = _entry_index(line)
            if index is not None:
                self.indexes.add(index)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if not self._stream.closed:
            self._stream.close()


def _entry_index(line: str) -> int | None:
    """The entry index of a result line; None for other lines (a table row, a reduce's answer)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    index = data.get("index") if isinstance(data, dict) else None
    return index if isinstance(index, int) else None


def _batch_lines(path: Path, batch_id: str) -> dict[int, dict[str, Any]]:
    """The lines of ``path`` that belong to ``batch_id``, by entry index (later lines win)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the results file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"the results file {path} is not UTF-8 text (not a results file?); "
            "choose another -o path"
        ) from None
    lines: dict[int, dict[str, Any]] = {}
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict) and line.get("batch") == batch_id and "index" in line:
            lines[int(line["index"])] = line
    return lines


def _file_mode(path: Path) -> int:
    """The target's mode if it exists, else what a plain ``open(path, "w")`` would give."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
