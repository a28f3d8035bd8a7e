"""medweave's capabilities as tools any agent can call (MCP, OpenAI function-calling schemas), and
evidence-based workflows declared as data (``medweave agent``)."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # what the names below resolve to, imported only on first use
    from .tools import TOOLS, Tool, ToolError, Toolbox, openai_tools
    from .workflow import Runner, Workflow, WorkflowError, load_workflow

__getattr__, __dir__ = lazy_exports(__name__, {
    "TOOLS": ".tools", "Tool": ".tools", "ToolError": ".tools", "Toolbox": ".tools", "openai_tools": ".tools",
    "Runner": ".workflow", "Workflow": ".workflow", "WorkflowError": ".workflow", "load_workflow": ".workflow",
})
__all__ = ["Runner", "TOOLS", "Tool", "ToolError", "Toolbox", "Workflow", "WorkflowError", "load_workflow",
           "openai_tools"]
