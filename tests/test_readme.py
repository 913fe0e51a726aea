"""The README's first command works as written (offline, embedded) and its test command is CI's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from rho_agent.testing import ScriptedModelServer, error

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def quick_start_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block is not None, "README must open with a bash block of two commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_install_and_test_commands() -> None:
    install, test = quick_start_commands()
    assert "pip install -e '.[fleet]'" in install and "rho-agent dispatch" in install
    assert test == "bash .ci/run"


def test_main_job_runs_offline_on_the_embedded_fleet(tmp_path: Path) -> None:
    install, _ = quick_start_commands()
    main_job = install.split("&& ")[-1].split()
    assert main_job[:2] == ["rho-agent", "dispatch"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    env["RHO_AGENT_SESSIONS_DIR"] = str(tmp_path)
    env.pop("RHO_AGENT_BROKER_URL", None)
    cli = [sys.executable, "-c", "from rho_agent.cli import main; main()"]
    done = subprocess.run(
        [*cli, *main_job[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "offline mode" in done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    prompts = (ROOT / main_job[2]).read_text().splitlines()
    assert len(results) == len(prompts) > 0
    assert all(result["status"] == "completed" for result in results)
    assert [r["index"] for r in results] == list(range(len(prompts)))
    answers = [result["text"] for result in results]
    assert len(set(answers)) == len(answers), f"offline answers repeat: {answers}"
    assert any("README.md has" in answer and '"# rho-agent"' in answer for answer in answers)
    for result in results:  # rounded: 0.0006655, never 0.0006655000000000001
        assert len(repr(result["usage"]["cost_usd"])) <= 12, result["usage"]
    summary = done.stderr.strip().splitlines()[-1]
    assert f": {len(prompts)} completed, 0 failed · tokens " in summary, summary
    assert summary.count("failed") == 1, summary


def test_the_python_snippet_says_why_a_run_failed(tmp_path: Path) -> None:
    snippet = re.search(r"```python\n(.*?)```", README, re.S)
    assert snippet is not None and "result.error" in snippet.group(1)
    with ScriptedModelServer(responder=lambda body: error(401, "bad key, try another")) as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test",
               "HOME": str(tmp_path)}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", snippet.group(1)],
            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "failed: ModelError: model API error 401: bad key, try another" in done.stdout
