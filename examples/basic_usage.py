"""The seed's "Basic usage": configure, create an Agent, open a Session, run a prompt.

Run against a real model with OPENAI_API_KEY set, or against any OpenAI-compatible server with
OPENAI_BASE_URL (the test suite points it at the project's scripted model server).
"""

import asyncio
import tempfile

from rho_agent import Agent, AgentConfig, Session

config = AgentConfig(
    system_prompt="You are a research assistant.",
    profile="developer",
    model="gpt-5-mini",
    working_dir=tempfile.mkdtemp(prefix="rho-work-"),
)

agent = Agent(config)
session = Session(agent)


async def main() -> None:
    result = await session.run(prompt="Analyze recent failures and summarize root causes.")
    if result.error is not None:
        raise SystemExit(f"the run failed: {result.error}")
    print(result.text)


asyncio.run(main())
