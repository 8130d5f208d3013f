"""Simulated engine and discrete-event simulator.

`simulate(workload, policy, SimConfig(...), concurrency=...)` replays a `Workload` under a pure
policy object against a step-level, roofline-timed model of a vLLM-like engine, in virtual time.
"""

from legato.engine_adapter.sim.driver import SimConfig, simulate
from legato.engine_adapter.sim.hardware import GPUS, TIERS
from legato.engine_adapter.sim.models import MODELS

__all__ = ["GPUS", "MODELS", "TIERS", "SimConfig", "simulate"]
