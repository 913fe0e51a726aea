"""Fan-out analysis: review every file for the same questions, get a table, then the worst findings.

Each file is reviewed by its own job (``Dispatcher.map`` with an ``output_schema``: every answer
comes back as a validated ``Review``), the reviews are written as a CSV table, and a reduce job
(``Dispatcher.reduce``) picks the worst findings with their evidence. With
``RHO_AGENT_BROKER_URL`` set it runs on the fleet; otherwise in this process.

Runs offline too: with no ``OPENAI_API_KEY`` and no ``OPENAI_BASE_URL``, answers come from the
project's scripted model server, which here plays a reviewer that reads the files for risky code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field

from dispatch import Dispatcher
from dispatch.table import result_rows, write_table
from rho_agent import AgentConfig


class Review(BaseModel):
    """What each file's reviewer answers: the same questions for every file."""

    path: str
    risk: int = Field(ge=0, le=5, description="0 = nothing to fix, 5 = fix today")
    uses_eval: bool
    bare_except: bool
    evidence: str = Field(description="the line that shows the worst problem, or ''")


class Finding(BaseModel):
    path: str
    risk: int
    evidence: str


class Report(BaseModel):
    """The reduce's answer: the worst findings first, and the files that could not be reviewed."""

    worst: list[Finding]
    failed: list[str]


SOURCES = {  # the project under review (a job carries content, never a path)
    "app/config.py": "import os\nDEBUG = os.environ.get('DEBUG')\n",
    "app/calc.py": "def calc(expr):\n    return eval(expr)\n",
    "app/io.py": (
        "def read(p):\n    try:\n        return open(p).read()\n    except:\n        pass\n"
    ),
    "app/both.py": "try:\n    x = eval(input())\nexcept:\n    x = 0\n",
    "app/util.py": "def add(a, b):\n    return a + b\n",
}

REVIEW_PROMPT = """Review the Python file {path} for risky code. Answer with its path, a risk from
0 to 5, whether it uses eval, whether it has a bare except, and the line that shows the worst
problem as evidence.

```python
{source}
```"""

REDUCE_PROMPT = "List the worst findings first (at most ten, with risk >= 1) with their evidence."


def main() -> None:
    config = AgentConfig(system_prompt="You are a careful code reviewer.", profile="readonly")
    with model_endpoint(config), Dispatcher() as dispatcher:
        prompts = [REVIEW_PROMPT.format(path=p, source=s) for p, s in SOURCES.items()]
        jobs = dispatcher.map(prompts, config, output_schema=Review)
        reviews = dispatcher.gather(jobs, timeout=600)
        write_table(result_rows([job.id for job in jobs], reviews), sys.stdout, "csv")
        reduction = dispatcher.reduce(jobs, REDUCE_PROMPT, config, output_schema=Report)
        report = reduction.result(timeout=600)
    if not isinstance(report.output, Report):
        raise SystemExit(f"the reduce failed: {report.status}: {report.error}")
    print(f"\nbatch {reduction.id}: " + ", ".join(level.name for level in reduction.levels))
    for finding in report.output.worst:
        print(f"risk {finding.risk}  {finding.path}: {finding.evidence}")
    if report.output.failed:
        print("not reviewed:", ", ".join(report.output.failed))


@contextlib.contextmanager
def model_endpoint(config: AgentConfig) -> Iterator[None]:
    """A real model when one is configured, else the scripted reviewer (offline mode)."""
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        yield
        return
    from rho_agent.testing import ScriptedModelServer

    print("offline mode: answers come from the scripted reviewer", file=sys.stderr)
    with ScriptedModelServer(responder=offline_reviewer) as server:
        config.base_url = server.base_url
        yield


def offline_reviewer(body: dict[str, Any]) -> Any:
    """Reads the file in a review prompt, or the reviews in a reduce prompt, and answers."""
    from rho_agent.testing import structured

    prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
    if prompt.startswith("Review the Python file"):
        path = prompt.split()[4]
        source = prompt.split("```python\n", 1)[1].rsplit("```", 1)[0]
        lines = source.splitlines()
        uses_eval = "eval(" in source
        bare_except = any(line.strip() == "except:" for line in lines)
        risky = [line.strip() for line in lines if "eval(" in line or line.strip() == "except:"]
        risk = 4 * uses_eval + bare_except
        return structured(
            {"path": path, "risk": min(risk, 5), "uses_eval": uses_eval,
             "bare_except": bare_except, "evidence": risky[0] if risky else ""}
        )  # fmt: skip
    findings, failed = [], []
    for source, status, body_text in re.findall(r"^### (\S+) \((.+?)\)\n(.*)$", prompt, re.M):
        if status != "completed":
            failed.append(source)
            continue
        data = json.loads(body_text)
        findings += data.get("worst", [data])
    worst = sorted((f for f in findings if f["risk"] >= 1), key=lambda f: -f["risk"])[:10]
    keep = [{"path": f["path"], "risk": f["risk"], "evidence": f["evidence"]} for f in worst]
    return structured({"worst": keep, "failed": failed})


if __name__ == "__main__":
    os.chdir(tempfile.mkdtemp(prefix="rho-analysis-"))
    main()
