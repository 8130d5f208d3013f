"""legato.tools: tool registry, Python / subprocess / client-side tools, per-run environments,
latency statistics. See `ToolRuntime` for the executor's entry point."""

from legato.tools.base import (
    BadToolArgsError,
    ErrorKind,
    Tool,
    ToolContext,
    ToolKind,
    ToolResult,
    ToolSpec,
    UnknownToolError,
)
from legato.tools.client import (
    ClientTool,
    ClientToolBroker,
    DuplicateSubmissionError,
    PendingToolCall,
    UnknownClientCallError,
)
from legato.tools.env import (
    EnvironmentManager,
    EnvironmentReleasedError,
    EnvironmentSetupError,
    ToolEnvironment,
    ToolEnvironmentError,
)
from legato.tools.process import ProcessGroups, ResourceLimits
from legato.tools.python_tool import PythonTool
from legato.tools.registry import ToolRegistry, default_registry, tool
from legato.tools.runtime import ToolRuntime
from legato.tools.stats import LognormalFit, ToolLatencyStats
from legato.tools.subprocess_tool import SubprocessTool

__all__ = [
    "BadToolArgsError",
    "ClientTool",
    "ClientToolBroker",
    "DuplicateSubmissionError",
    "EnvironmentManager",
    "EnvironmentReleasedError",
    "EnvironmentSetupError",
    "ErrorKind",
    "LognormalFit",
    "PendingToolCall",
    "ProcessGroups",
    "PythonTool",
    "ResourceLimits",
    "SubprocessTool",
    "Tool",
    "ToolContext",
    "ToolEnvironment",
    "ToolEnvironmentError",
    "ToolKind",
    "ToolLatencyStats",
    "ToolRegistry",
    "ToolResult",
    "ToolRuntime",
    "ToolSpec",
    "UnknownClientCallError",
    "UnknownToolError",
    "default_registry",
    "tool",
]
