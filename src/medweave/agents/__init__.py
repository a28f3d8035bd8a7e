"""medweave's capabilities as tools any agent can call (MCP, OpenAI function-calling schemas), and
evidence-based workflows declared as data (``medweave agent``)."""

from .tools import TOOLS, Tool, ToolError, Toolbox, openai_tools

__all__ = ["TOOLS", "Tool", "ToolError", "Toolbox", "openai_tools"]
