"""The seed's "Custom tools": register your own handler before creating a session."""

import asyncio

from rho_agent import Agent, AgentConfig, Session, tool


@tool
def my_custom_handler(data: str, uppercase: bool = False) -> str:
    """Process a piece of data and return a short report.

    Args:
        data: The data to process.
        uppercase: Return the data in upper case.
    """
    processed = data.upper() if uppercase else data
    return f"processed {len(data)} characters: {processed}"


async def main() -> None:
    agent = Agent(AgentConfig(profile="developer"))
    agent.registry.register(my_custom_handler)

    session = Session(agent)
    result = await session.run(prompt="Use my custom tool to process the data.")
    print(result.text)


asyncio.run(main())
