"""A ReAct coding agent that fixes a bug in a small Python module, through subprocess tools.

Each turn the model sees the task and the transcript so far, and answers with one action:
`Action: list_files[]`, `Action: read_file[calc.py]`, `Action: run_tests[]` or
`Action: write_file[calc.py]` followed by the new file in a ``` block. Every tool is a real
subprocess in the run's private workspace, started from an argv list (model output is passed as
one argument or on stdin, never through a shell), with a timeout and CPU/memory limits.

With the built-in seeded model the replies are noise, so the parser falls back to a fixed plan
(look, read, test, write a fix, test again): the run still makes 10+ real tool calls and ends.
With a real checkpoint the model's own actions drive it.

Program-level speculation (`--program-spec on`): the reply's action is parsed as it streams
(`tool_call=`), so a pure tool (all but `write_file`) starts before the reply ends, and
`ctx.warm(...)` prefills the next prompt's known start while each tool runs.

    legato run examples/react_coder.py                       # seeded model
    legato run examples/react_coder.py --checkpoint DIR      # a Hugging Face Llama/Qwen2 checkpoint
    legato run examples/react_coder.py --program-spec on     # with program-level speculation
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

import legato
from legato.programs.agent import AgentContext, ToolCallError
from legato.tools import SubprocessTool, ToolRegistry

MAX_TURNS = 12
MIN_TOOL_CALLS = 10

BUGGY_MODULE = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
FIXED_MODULE = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
TESTS = (
    "from calc import add, mul\n\n"
    "assert add(2, 3) == 5, 'add(2, 3) should be 5'\n"
    "assert mul(2, 3) == 6, 'mul(2, 3) should be 6'\n"
    "print('all tests passed')\n"
)


def limited(
    name: str, argv: list[str], *, pure: bool = False, stdin_arg: str | None = None
) -> SubprocessTool:
    """A subprocess tool with a timeout and CPU/memory limits."""
    return SubprocessTool(
        name,
        argv,
        pure=pure,
        stdin_arg=stdin_arg,
        timeout=10.0,
        cpu_seconds=5,
        memory_bytes=512 * 1024 * 1024,
    )


registry = ToolRegistry()
registry.register(limited("list_files", ["ls", "-1"], pure=True))
registry.register(limited("read_file", ["cat", "--", "{path}"], pure=True))
registry.register(
    limited(
        "write_file",
        [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write(sys.stdin.read())", "{path}"],
        stdin_arg="content",
    )
)
# -B: no bytecode cache, so running the tests writes nothing and the tool is pure
registry.register(limited("run_tests", [sys.executable, "-B", "test_calc.py"], pure=True))

SYSTEM = legato.PrefixPart(
    "react_coder_system",
    "You are a coding agent working in a small repository. Fix the failing tests.\n"
    "Answer with exactly one action per turn:\n"
    "Action: list_files[]\nAction: read_file[FILE]\nAction: run_tests[]\n"
    "Action: write_file[FILE] followed by the complete new file in a ``` block.\n"
    "Say 'Action: finish[]' once the tests pass.\n\n",
)

# What an agent that cannot parse the model's reply does next: a fixed, sensible plan.
FALLBACK_PLAN = [
    ("list_files", ""),
    ("read_file", "calc.py"),
    ("read_file", "test_calc.py"),
    ("run_tests", ""),
    ("write_file", "calc.py"),
    ("run_tests", ""),
    ("read_file", "calc.py"),
    ("list_files", ""),
]
_ACTION = re.compile(r"Action:\s*(list_files|read_file|write_file|run_tests|finish)\[([^\]\n]*)\]")
_CODE = re.compile(r"```(?:python)?\n(.*?)```", re.DOTALL)


def parse_action(reply: str, turn: int) -> tuple[str, str, str | None]:
    """(tool, argument, new file content) from the model's reply, or the fallback plan's step."""
    match = _ACTION.search(reply)
    if match is None:
        tool, arg = FALLBACK_PLAN[turn % len(FALLBACK_PLAN)]
        return tool, arg, FIXED_MODULE if tool == "write_file" else None
    tool, arg = match.group(1), match.group(2).strip()
    code = _CODE.search(reply[match.end() :])
    return tool, arg, code.group(1) if code else None


def safe_path(arg: str) -> str | None:
    """Only plain file names inside the workspace."""
    return arg if re.fullmatch(r"[A-Za-z0-9_.-]+", arg) and arg not in (".", "..") else None


def decide(reply: str, turn: int) -> tuple[str, dict[str, str]]:
    """The tool call a reply asks for (fallback plan included), with its exact arguments."""
    tool, arg, content = parse_action(reply, turn)
    if tool == "finish":
        return "finish", {}
    if tool == "read_file":
        return tool, {"path": safe_path(arg) or "calc.py"}
    if tool == "write_file":
        return tool, {"path": safe_path(arg) or "calc.py", "content": content or FIXED_MODULE}
    return tool, {}


def streamed_call(turn: int) -> Callable[[str], tuple[str, dict[str, str]] | None]:
    """For early tool start: the call the reply streamed so far decides. A complete
    `Action: NAME[ARG]` cannot change once streamed (the first match wins); before one has
    streamed, the fallback step is the provisional call. Legato keeps an early result only if
    the call made after the whole reply is exactly this one."""

    def parse(reply_so_far: str) -> tuple[str, dict[str, str]] | None:
        tool, args = decide(reply_so_far, turn)
        return None if tool == "finish" else (tool, args)

    return parse


@legato.agent(name="react-coder")
async def program(
    ctx: AgentContext, task: str = "The tests in test_calc.py fail. Fix calc.py."
) -> dict[str, object]:
    await ctx.tool("write_file", path="calc.py", content=BUGGY_MODULE, label="setup-module")
    await ctx.tool("write_file", path="test_calc.py", content=TESTS, label="setup-tests")
    transcript = ""
    tool_calls, passed = 0, False  # agent turns only; the two setup writes are not counted
    for turn in range(MAX_TURNS):
        reply = await ctx.llm(
            SYSTEM,
            f"Task: {task}\n{transcript}\nTurn {turn}. ",
            max_tokens=24,
            label="think",
            tool_call=streamed_call(turn),
        )
        tool, args = decide(reply, turn)
        if tool == "finish":
            if passed and tool_calls >= MIN_TOOL_CALLS:
                break
            tool, args = "run_tests", {}
        step = f"Action: {tool}[{args.get('path', '')}]\nObservation: "
        ctx.warm(SYSTEM, f"Task: {task}\n{transcript}{step}", label="think")  # the next prompt's start
        try:
            result = await ctx.tool(tool, args, label=tool)
            observation = (str(result.get("stdout", "")) + str(result.get("stderr", "")))[-400:]
            if tool == "run_tests":
                passed = result.get("exit_code") == 0
        except ToolCallError as exc:  # a tool that timed out or hit a limit is an observation too
            observation = f"error ({exc.kind}): {exc}"
        tool_calls += 1
        transcript += f"{step}{observation}\n"
        if passed and tool_calls >= MIN_TOOL_CALLS:
            break
    return {"tests_passed": passed, "tool_calls": tool_calls, "turns": turn + 1}
