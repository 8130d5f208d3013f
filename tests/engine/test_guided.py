"""Guided decoding in the torch engine's continuous batching: forced tool calls and JSON Schemas
produce schema-valid output from the random seeded model, through preemption and prefix caching,
and end within max_tokens (the closing witness)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from legato.engine_adapter.base import GenerateRequest, SamplingParams
from legato.engine_adapter.chat.grammar import json_schema_grammar
from legato.engine_adapter.chat.output import chat_message
from legato.engine_adapter.chat.plan import plan_chat
from legato.engine_adapter.openai_api import ChatCompletionRequest
from legato.engine_adapter.torch import build_core
from legato.engine_adapter.torch.core import EngineCore
from tests.tiny_model import tiny_model_config

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
SEARCH = {
    "type": "object",
    "properties": {"query": {"type": "string"}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
    "required": ["query"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "search", "parameters": SEARCH}},
]


def _core(num_blocks: int = 1024) -> EngineCore:
    return build_core(None, "cpu", model_config=tiny_model_config(4096), num_blocks=num_blocks, seed=0)


def _text(outputs: list[Any]) -> tuple[str, str, int]:
    return (
        "".join(o.text for o in outputs),
        outputs[-1].finish_reason,
        sum(len(o.token_ids) for o in outputs),
    )


def test_forced_tool_calls_are_schema_valid_100_of_100() -> None:
    core = _core()
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": TOOLS,
            "tool_choice": "required",
        }
    )
    plan = plan_chat(body, core.tokenizer)
    assert plan.grammar is not None
    prompt = tuple(core.tokenizer.apply_chat_template(plan.messages, tools=plan.tools))
    requests = [
        GenerateRequest(
            f"r{i}",
            prompt,
            SamplingParams(max_tokens=110 + i % 40, temperature=1.0, seed=i, grammar=plan.grammar),
        )
        for i in range(100)
    ]
    outputs = core.run_to_completion(requests)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    valid = 0
    for r in requests:
        text, reason, n = _text(outputs[r.request_id])
        assert n <= r.sampling.max_tokens
        message, finish = chat_message(plan, text, reason)
        assert finish == "tool_calls", text
        assert message.tool_calls
        for call in message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
        valid += 1
    assert valid == 100
    assert core.stats().prefix_hit_requests > 0  # the shared prompt came from the prefix cache


def test_json_schema_output_survives_preemption() -> None:
    core = _core(num_blocks=40)  # 8 sequences of ~200 tokens cannot all stay resident
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "array", "items": {"type": "integer"}}},
        "required": ["a", "b"],
    }
    grammar = json_schema_grammar(schema)
    prompt = tuple(core.tokenizer.apply_chat_template([{"role": "user", "content": "x" * 200}]))
    requests = [
        GenerateRequest(
            f"p{i}", prompt, SamplingParams(max_tokens=120, temperature=1.0, seed=i, grammar=grammar)
        )
        for i in range(8)
    ]
    outputs = core.run_to_completion(requests)
    assert core.stats().preemptions > 0
    for r in requests:
        text, reason, _ = _text(outputs[r.request_id])
        assert reason == "stop", text
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_budget_of_exactly_the_shortest_output_still_closes_it(seed: int) -> None:
    core = _core()
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    shortest = '{"a": ""}'
    prompt = tuple(core.tokenizer.apply_chat_template([{"role": "user", "content": "go"}]))
    budget = len(shortest) + 1  # one byte token per character, plus end of sequence
    req = GenerateRequest(
        "b",
        prompt,
        SamplingParams(max_tokens=budget, temperature=1.0, seed=seed, grammar=json_schema_grammar(schema)),
    )
    text, reason, n = _text(core.run_to_completion([req])["b"])
    assert (text, reason, n) == (shortest, "stop", budget)


def test_a_forked_grammar_moves_independently() -> None:
    """What n > 1 sampling needs: siblings of one prompt each keep their own matcher."""
    core = _core()
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    from legato.engine_adapter.torch.guided import GrammarCompiler

    compiler = GrammarCompiler(core.tokenizer, core.model.config.vocab_size)
    one = compiler.sequence(json_schema_grammar(schema), [257, 260], 32)
    two = one.fork()
    for t in b'{"a": "x':
        assert one.vet(t, 32) == t
    assert not two.matcher.is_accepting() and two.matcher.validate_tokens(list(b'{"a": ""}')) == 9
    assert one.matcher.validate_tokens(list(b'"}')) == 2


def test_one_schema_compiles_once_and_its_sequences_move_independently() -> None:
    """Sequences of one grammar are copies of one compiled template (shared lexer): each still
    moves on its own, the template never moves, and the least recently used template goes."""
    core = _core()
    from legato.engine_adapter.torch.guided import GrammarCompiler

    compiler = GrammarCompiler(core.tokenizer, core.model.config.vocab_size, capacity=1)
    spec = json_schema_grammar({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
    one = compiler.sequence(spec, [257, 260], 32)
    for t in b'{"a": "x':
        assert one.vet(t, 32) == t
    two = compiler.sequence(spec, [257, 260], 32)  # the template is still at the start
    assert len(compiler._templates) == 1
    assert two.matcher.validate_tokens(list(b'{"a": ""}')) == 9
    assert one.matcher.validate_tokens(list(b'"}')) == 2
    other = json_schema_grammar({"type": "array", "items": {"type": "integer"}})
    three = compiler.sequence(other, [257, 260], 32)
    assert len(compiler._templates) == 1 and three.matcher.validate_tokens(list(b"[1]")) == 3


def test_n_samples_each_follow_the_grammar() -> None:
    """n > 1 forks the prompt's sequence after prefill: every sample gets its own matcher clone,
    so all n outputs are valid (a sample left without one would be unconstrained)."""
    core = _core()
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "array", "items": {"type": "integer"}}},
        "required": ["a", "b"],
    }
    prompt = tuple(core.tokenizer.apply_chat_template([{"role": "user", "content": "three, please"}]))
    sp = SamplingParams(max_tokens=80, temperature=1.0, seed=5, n=3, grammar=json_schema_grammar(schema))
    outputs = core.run_to_completion([GenerateRequest("n3", prompt, sp)])["n3"]
    assert core.stats().forked_samples == 2
    for index in range(3):
        mine = [o for o in outputs if o.index == index]
        text, reason, n = _text(mine)
        assert reason == "stop" and n <= 80, text
        jsonschema.validate(json.loads(text), schema)
    texts = {"".join(o.text for o in outputs if o.index == i) for i in range(3)}
    assert len(texts) > 1  # independent samples, not one output three times


def test_grammar_requests_do_not_speculate() -> None:
    """The speculator drafts for plain greedy requests only: a greedy constrained request never
    gets a draft (its matcher moves one vetted token at a time), even when the drafter's history
    holds its exact output; batched with a speculating request it decodes exactly as without a
    speculator, and stays valid."""
    from legato.engine_adapter.torch.scheduler import SchedulerOutput
    from legato.engine_adapter.torch.speculator import Speculator

    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    prompt = tuple(range(10, 30)) * 2

    def reqs(tag: str) -> list[GenerateRequest]:
        return [
            GenerateRequest(
                f"g{tag}", prompt, SamplingParams(max_tokens=40, grammar=json_schema_grammar(schema))
            ),
            GenerateRequest(f"plain{tag}", prompt, SamplingParams(max_tokens=24, ignore_eos=True)),
        ]

    plain, spec = _core(), _core()
    speculator = spec.speculator = Speculator("suffix", 4)
    after_schedule = speculator.after_schedule

    def no_constrained_drafts(plan: SchedulerOutput) -> None:
        assert all(c.seq.num_draft == 0 for c in plan.chunks if c.seq.grammar is not None)
        after_schedule(plan)

    speculator.after_schedule = no_constrained_drafts  # type: ignore[method-assign]
    want = plain.run_to_completion(reqs("1"))
    for tag in ("1", "2"):  # the second run's history holds the first run's outputs
        got = spec.run_to_completion(reqs(tag))
        for rid in ("g", "plain"):
            assert [o.token_ids for o in got[rid + tag]] == [o.token_ids for o in want[rid + "1"]]
        text, reason, _ = _text(got["g" + tag])
        assert reason == "stop", text
        jsonschema.validate(json.loads(text), schema)
    assert speculator.accepted > 0  # the plain request did speculate


def test_a_remembered_bridge_repairs_a_repeated_deviation() -> None:
    """A UTF-8 lead byte inside a string breaks the witness; the first repair is searched, the
    same kind of repair later reuses the remembered bridge (no search), and the witness still
    validates from the matcher's state every time."""
    core = _core()
    from legato.engine_adapter.torch.guided import GrammarCompiler

    compiler = GrammarCompiler(core.tokenizer, core.model.config.vocab_size)
    spec = json_schema_grammar({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})
    g = compiler.sequence(spec, [257, 260], 64)
    searches: list[int] = []
    search = g._witness

    def counted(*args: Any, **kwargs: Any) -> list[int] | None:
        searches.append(1)
        return search(*args, **kwargs)

    g._witness = counted  # type: ignore[method-assign]
    budget = 64
    for t in [*b'{"a": "x', 0xC3, 0xA9, ord("y"), 0xC5, 0x80, ord("z")]:
        if t == 0xC3:
            searches.clear()
        assert g.vet(t, budget) == t
        budget -= 1
        assert g.witness is not None and g.matcher.validate_tokens(g.witness) == len(g.witness)
    assert len(searches) == 1 and g.bridges[0][0] == 0x80  # a continuation byte, then on
