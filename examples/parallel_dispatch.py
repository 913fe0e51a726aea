"""The seed's "Parallel dispatch": many agents at once in one event loop."""

import asyncio
import tempfile

from rho_agent import Agent, AgentConfig, Session


async def analyze(task_prompt: str, work_dir: str) -> str:
    config = AgentConfig(
        system_prompt="You are an analyst.",
        profile="readonly",
        working_dir=work_dir,
    )
    session = Session(Agent(config))
    result = await session.run(prompt=task_prompt)
    return result.text


async def main() -> None:
    app1, app2, app3 = (
        tempfile.mkdtemp(prefix=f"rho-{name}-") for name in ("app1", "app2", "app3")
    )
    tasks = [
        asyncio.create_task(analyze("Check error rates.", app1)),
        asyncio.create_task(analyze("Check latency metrics.", app2)),
        asyncio.create_task(analyze("Check disk usage.", app3)),
    ]
    results = await asyncio.gather(*tasks)
    for text in results:
        print(text)


asyncio.run(main())
