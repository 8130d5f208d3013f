"""Tree-of-thought search with forks: propose in parallel, score, keep the best, go deeper.

A dynamic agent: at each of DEPTH levels, every kept line of thought forks BRANCHING proposals
in parallel (`ctx.gather`), each proposal is scored by the model, and the BEAM best survive.
All calls share the problem statement as a prefix part, so the fan-out reuses its KV.

Scores are parsed from the model's reply ("Score: 7"); the seeded model's replies carry none,
so a deterministic heuristic stands in and the search still runs to completion.

    legato run examples/tree_of_thought.py
    legato run examples/tree_of_thought.py --input problem="Plan a 3-step proof that sqrt(2) is irrational"
"""

import re
import zlib

import legato
from legato.programs.agent import AgentContext

DEPTH = 3
BRANCHING = 3
BEAM = 2

GUIDE = legato.PrefixPart(
    "tot_guide",
    "You solve problems step by step. Propose one next step at a time, then rate steps 1-10.\n",
)


def parse_score(reply: str, thought: str) -> float:
    """The model's 'Score: N', or a deterministic stand-in when it gave none."""
    match = re.search(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", reply, re.IGNORECASE)
    if match:
        return min(float(match.group(1)), 10.0)
    return (zlib.crc32(thought.encode()) % 1000) / 100.0


@legato.agent(name="tree-of-thought")
async def program(
    ctx: AgentContext, problem: str = "Make 24 from the numbers 4, 7, 8, 8."
) -> dict[str, object]:
    beam: list[tuple[float, str]] = [(0.0, "")]
    proposals = 0
    for _level in range(DEPTH):
        candidates: list[tuple[float, str]] = []
        for _, path in beam:

            async def expand(branch: AgentContext, k: int, path: str = path) -> tuple[float, str]:
                step = await branch.llm(
                    GUIDE, f"Problem: {problem}\nSteps so far:{path}\nNext step (option {k}):", max_tokens=16
                )
                thought = f"{path}\n- {step.strip()[:80]}"
                reply = await branch.llm(GUIDE, f"Problem: {problem}\nSteps:{thought}\nScore:", max_tokens=4)
                return parse_score(reply, thought), thought

            scored = await ctx.gather(*[lambda b, k=k, e=expand: e(b, k) for k in range(BRANCHING)])
            proposals += len(scored)
            candidates.extend(scored)
        beam = sorted(candidates, key=lambda c: c[0], reverse=True)[:BEAM]
    best_score, best_path = beam[0]
    answer = await ctx.llm(GUIDE, f"Problem: {problem}\nSteps:{best_path}\nFinal answer:", max_tokens=16)
    return {"proposals": proposals, "depth": DEPTH, "best_score": best_score, "answer": answer}
