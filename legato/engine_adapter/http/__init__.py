"""Engines over HTTP: vLLM and SGLang servers (and `legato engine serve`, which speaks both)."""

from legato.engine_adapter.http.sglang import SGLangEngine
from legato.engine_adapter.http.vllm import VLLMEngine

__all__ = ["SGLangEngine", "VLLMEngine"]
