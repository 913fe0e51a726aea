"""The agent loop's private steps: one run of prompts (``run``) and one batch of tool calls
(``tool_step``). ``Session`` drives them; nothing outside the SDK imports them."""
