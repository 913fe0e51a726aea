"""The seed's "Observing events in real time": a StateObserver that logs every tool call."""

import asyncio
import tempfile

from rho_agent import Agent, AgentConfig, Session


class ToolAuditLog:
    def on_event(self, event: dict) -> None:
        if event.get("tool_calls"):
            for tc in event["tool_calls"]:
                print(f"[{event['ts']}] {tc['function']['name']}")


async def main() -> None:
    agent = Agent(AgentConfig(profile="readonly", working_dir=tempfile.mkdtemp(prefix="rho-")))
    session = Session(agent)
    session.state.add_observer(ToolAuditLog())
    result = await session.run(prompt="Look around the working directory.")
    print(result.text)


asyncio.run(main())
