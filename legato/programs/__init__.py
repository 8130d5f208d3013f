"""legato.programs: what a program is, and how it runs.

- `spec`: the wire format (pydantic; JSON round-trip is lossless; `legato schema`).
- `validate`, `model`: static checks with precise messages; the networkx control-flow graph.
- `state`, `routing`, `prompt`, `output`: reducers, declarative conditions, prefix parts -> token
  ids, LLM output parsing.
- `builder` (declarative, LangGraph-like) and `agent` (dynamic `@agent async def f(ctx, ...)`).
- `executor` (+ `graph_run`, `calls`): anyio runs, journal (`journal`), event streams (`events`).
- `loader`, `commands`: `legato run FILE` and `legato schema`.
"""
