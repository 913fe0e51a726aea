"""Offline mode looks like an agent: the ``workspace`` behaviour, and costs that print rounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from rho_agent import Agent, AgentConfig, Session, State
from rho_agent.pricing import ModelPrice, PriceTable
from rho_agent.testing import ScriptedModelServer, behaviour
from rho_agent.trace import encode_record

PROMPTS = (
    "Summarise what is in the working directory.",
    "List the files here and say which one looks most important.",
    "Check the working directory for anything unusual.",
    "Give a one-line overview of this project layout.",
    "Find configuration files in the working directory.",
    "Report how many entries the working directory has.",
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "docs").mkdir()
    (work / ".hidden").mkdir()
    (work / "README.md").write_text("intro line\n# Widget\n\nA widget.\n" + "more\n" * 300)
    (work / "pyproject.toml").write_text("[project]\nname = 'widget'\n")
    (work / "empty.txt").write_text("")
    return work


async def ask(server: ScriptedModelServer, work: Path, prompt: str) -> tuple[str, list[str]]:
    """The answer, and the tool calls the agent made (``name path``)."""
    session = Session(Agent(AgentConfig(base_url=server.base_url, working_dir=str(work))))
    result = await session.run(prompt=prompt)
    assert result.status == "completed", result
    calls = [f"{e.tool_name} {(e.tool_args or {}).get('path')}" for e in result.events
             if e.type == "tool_start"]  # fmt: skip
    return result.text, calls


async def test_each_prompt_gets_its_own_answer_from_what_the_tools_found(
    model_server: ScriptedModelServer, workdir: Path
) -> None:
    model_server.responder = behaviour("workspace")
    answers = {prompt: await ask(model_server, workdir, prompt) for prompt in PROMPTS}
    texts = [answer for answer, _ in answers.values()]
    assert len(set(texts)) == len(PROMPTS), texts
    summary, calls = answers[PROMPTS[0]]
    assert calls == ["list .", "read README.md"]
    assert summary == (
        'The working directory holds 6 entries; README.md has 304 lines and starts with "# Widget".'
    )
    assert answers[PROMPTS[1]][0].startswith("README.md looks most important")
    assert (
        ".hidden/" in answers[PROMPTS[2]][0] and "empty files: empty.txt" in answers[PROMPTS[2]][0]
    )
    assert "src/" in answers[PROMPTS[3]][0] and ".hidden/" not in answers[PROMPTS[3]][0]
    assert answers[PROMPTS[4]] == ("Configuration files here: pyproject.toml.", ["list ."])
    assert answers[PROMPTS[5]][0] == (
        "The working directory has 6 entries (3 directories, 3 files)."
    )
    again = [await ask(model_server, workdir, prompt) for prompt in PROMPTS]
    assert again == list(answers.values())  # deterministic


async def test_a_prompt_naming_a_file_reads_it_and_a_missing_one_is_reported(
    model_server: ScriptedModelServer, workdir: Path
) -> None:
    model_server.responder = behaviour("workspace")
    answer, calls = await ask(model_server, workdir, "Summarise pyproject.toml, e.g. briefly.")
    assert calls == ["read pyproject.toml"]
    assert answer == 'Summary: pyproject.toml has 2 lines and starts with "[project]".'
    answer, calls = await ask(model_server, workdir, "What does docs/guide.md say?")
    assert calls == ["read docs/guide.md"]
    assert answer.startswith("I could not read docs/guide.md: Error:")


async def test_costs_are_rounded_where_they_are_added_up(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    # Prices like 0.1 and 0.2 have no exact binary float: unrounded, costs print with noise.
    model_server.responder = behaviour("noop-tools:2")
    agent = Agent(
        AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path)),
        price_table=PriceTable({"gpt-5-mini": ModelPrice(input=0.1, cached_input=0.0, output=0.2)}),
    )
    session = Session(agent)
    result = await session.run(prompt="go")
    costs = [r["cost_usd"] for r in session.state.records if r["type"] == "model_call"]
    assert len(costs) == 3
    for value in [*costs, result.usage["cost_usd"], session.state.usage["cost_usd"]]:
        assert value == round(value, 10) and len(repr(value)) <= 14, value
    replayed = State.from_jsonl(b"".join(encode_record(r) for r in session.state.records))
    assert replayed.usage["cost_usd"] == session.state.usage["cost_usd"]
