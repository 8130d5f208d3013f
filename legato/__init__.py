"""Legato: agent-workflow-aware orchestration for LLM inference.

The public SDK names are re-exported here (`legato.agent`, `legato.tool`, `legato.Program`, ...).
"""

__version__ = "0.1.0"
