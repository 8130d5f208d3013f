"""`text2sql`: a multi-stage text-to-SQL pipeline with a bounded repair loop.

Shape of one program (one question against one of `databases` databases, picked uniformly):
1. **link** (schema linking): prompt = linking system prompt (800-1,500 tokens, per tenant) +
   the database schema (2,000-8,000 tokens, one per database, shared by every question on it) +
   the question (50-200 tokens); 50-200 output tokens (the relevant tables and columns);
2. **generate**: prompt = generation system prompt (800-1,500, per tenant) + schema + question +
   the linking result; 100-400 output tokens (the SQL); then the `sql` tool executes it
   (lognormal, median 0.2 s, sigma 0.8) returning 50-1,000 tokens (log-uniform);
3. **repair** (0-`max_repairs` times): with probability `repair_prob` the execution failed; the
   repair prompt = the previous prompt + the SQL + the error, 100-400 output tokens, executed again;
4. **answer**: prompt = the last prompt + SQL + result; 50-300 output tokens; no tool.

Every program-prefix here is shared: all questions on a database share system + schema, and each
stage extends the previous stage's prompt. Tenants and arrivals as in `swe`.
"""

from __future__ import annotations

from legato.bench.workloads.common import (
    LatencyModel,
    check_positive,
    check_range,
    log_uniform_int,
    start_workload,
    uniform_int,
)
from legato.sim.workload import CallSpec, ProgramSpec, Segment, Workload

SQL = LatencyModel(median_s=0.2, sigma=0.8)


def generate(
    n_programs: int,
    seed: int,
    *,
    tenants: int = 1,
    tenant_weights: str = "",
    tenant_mix: str = "",
    arrival_rate: float = 0.0,
    databases: int = 20,
    system_min: int = 800,
    system_max: int = 1500,
    schema_min: int = 2000,
    schema_max: int = 8000,
    question_min: int = 50,
    question_max: int = 200,
    link_min: int = 50,
    link_max: int = 200,
    sql_min: int = 100,
    sql_max: int = 400,
    result_min: int = 50,
    result_max: int = 1000,
    answer_min: int = 50,
    answer_max: int = 300,
    repair_prob: float = 0.35,
    max_repairs: int = 3,
) -> Workload:
    """Generate `n_programs` text-to-SQL pipelines (see the module docstring for the shape)."""
    check_positive("programs", n_programs)
    check_positive("databases", databases)
    if not 0.0 <= repair_prob <= 1.0:
        raise ValueError(f"repair_prob must be in [0, 1], got {repair_prob}")
    if max_repairs < 0:
        raise ValueError(f"max_repairs must be >= 0, got {max_repairs}")
    for name, lo, hi in (
        ("system", system_min, system_max),
        ("schema", schema_min, schema_max),
        ("question", question_min, question_max),
        ("link", link_min, link_max),
        ("sql", sql_min, sql_max),
        ("result", result_min, result_max),
        ("answer", answer_min, answer_max),
    ):
        check_range(name, lo, hi)
    rng, ids, owners, arrivals = start_workload(
        n_programs,
        seed,
        tenants=tenants,
        tenant_weights=tenant_weights,
        tenant_mix=tenant_mix,
        arrival_rate=arrival_rate,
    )
    schema_tokens = [uniform_int(rng, schema_min, schema_max) for _ in range(databases)]
    system_tokens = {
        (t.name, stage): uniform_int(rng, system_min, system_max)
        for t in dict.fromkeys(owners)
        for stage in ("link", "generate")
    }
    programs = []
    for index, (tenant, arrival) in enumerate(zip(owners, arrivals, strict=True)):
        db = rng.randrange(databases)
        schema = ids.shared(("schema", db), schema_tokens[db])
        question = ids.fresh(uniform_int(rng, question_min, question_max))

        link_sys, gen_sys = (
            ids.shared(("text2sql-system", tenant.name, stage), system_tokens[(tenant.name, stage)])
            for stage in ("link", "generate")
        )
        link_out = ids.fresh(uniform_int(rng, link_min, link_max))
        calls = [
            CallSpec(
                node="link",
                prompt=(link_sys, schema, question),
                output_tokens=link_out.tokens,
                output_seg_id=link_out.seg_id,
            )
        ]
        prompt: tuple[Segment, ...] = (gen_sys, schema, question, link_out)
        attempt = 0
        while True:
            sql = ids.fresh(uniform_int(rng, sql_min, sql_max))
            calls.append(
                CallSpec(
                    node="generate" if attempt == 0 else f"repair-{attempt}",
                    prompt=prompt,
                    output_tokens=sql.tokens,
                    output_seg_id=sql.seg_id,
                    tool="sql",
                    tool_latency_s=SQL.draw(rng),
                    deps=(len(calls) - 1,),
                )
            )
            result = ids.fresh(log_uniform_int(rng, result_min, result_max))
            prompt = (*prompt, sql, result)
            failed = rng.random() < repair_prob
            if not failed or attempt == max_repairs:
                break
            attempt += 1
        answer = ids.fresh(uniform_int(rng, answer_min, answer_max))
        calls.append(
            CallSpec(
                node="answer",
                prompt=prompt,
                output_tokens=answer.tokens,
                output_seg_id=answer.seg_id,
                deps=(len(calls) - 1,),
            )
        )
        programs.append(
            ProgramSpec(
                program_id=f"text2sql-{index}",
                tenant=tenant.name,
                arrival_s=arrival,
                calls=tuple(calls),
                kind="text2sql",
                tenant_weight=tenant.weight,
            )
        )
    return Workload(name="text2sql", programs=tuple(programs))
