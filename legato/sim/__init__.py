"""Simulated engine and discrete-event simulator.

`simulate(workload, policy, SimConfig(...), concurrency=...)` replays a `Workload` under a pure
policy object against a step-level, roofline-timed model of a vLLM-like engine, in virtual time.
"""

from legato.sim.driver import SimConfig, simulate
from legato.sim.hardware import GPUS, TIERS
from legato.sim.models import MODELS

__all__ = ["GPUS", "MODELS", "TIERS", "SimConfig", "simulate"]
