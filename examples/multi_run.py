"""The seed's "Multi-run conversation": several prompts in one session, building on context."""

import asyncio

from rho_agent import Agent, AgentConfig, Session


async def main() -> None:
    agent = Agent(AgentConfig(system_prompt="You are a database analyst.", profile="readonly"))
    session = Session(agent)

    r1 = await session.run(prompt="List all tables in the database.")
    print(r1.text)

    r2 = await session.run(prompt="Show me the schema for the users table.")
    print(r2.text)

    r3 = await session.run(prompt="Find users who signed up in the last 7 days.")
    print(r3.text)

    print(f"runs: {session.state.run_count}, cost: ${session.state.usage['cost_usd']:.6f}")


asyncio.run(main())
