"""Legato: agent-workflow-aware orchestration for LLM inference.

The public SDK names are re-exported here (`legato.agent`, `legato.tool`, `legato.Program`, ...).
"""

from legato.programs.agent import AgentContext, agent
from legato.programs.builder import (
    END,
    START,
    CompiledProgram,
    Program,
    fan_out,
    llm,
    ref,
    route,
    slot,
    when,
)
from legato.programs.builder import tool as tool_node
from legato.programs.executor import Executor, RunResult
from legato.programs.prompt import PrefixPart, register_prefix
from legato.tools.registry import tool

__version__ = "0.1.0"

__all__ = [
    "END",
    "START",
    "AgentContext",
    "CompiledProgram",
    "Executor",
    "PrefixPart",
    "Program",
    "RunResult",
    "agent",
    "fan_out",
    "llm",
    "ref",
    "register_prefix",
    "route",
    "slot",
    "tool",
    "tool_node",
    "when",
]
