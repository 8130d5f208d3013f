"""legato.rl: RL rollout integration. A rollout is a program (its id is the program id): turns of
model tokens (loss mask 1) and tool / environment tokens (mask 0), with per-token logprobs and
the weight version that produced each token. `VerlServerManager` is verl's server-manager shape
over `legato serve`; the HTTP routes live in `legato.server` (`routes_rl*.py`)."""

from legato.rl.rollout import Rollout, SampleOutput, assemble_outputs
from legato.rl.verl import TokenOutput, VerlServerManager

__all__ = ["Rollout", "SampleOutput", "TokenOutput", "VerlServerManager", "assemble_outputs"]
