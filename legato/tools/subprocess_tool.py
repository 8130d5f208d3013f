"""Subprocess tools: a fixed argv template whose `{arg}` placeholders are filled from tool args.

The security rule: model output never reaches a shell. Each placeholder is replaced by the argument's
string value *inside one argv element*, and the program (argv[0]) can never be a placeholder, so an
argument like ``"; rm -rf / #"`` or ``$(echo pwned)`` is passed to the program literally. If a tool
really needs a shell, its author writes ``["bash", "-c", "fixed script", "bash", "{arg}"]`` and reads
the argument as ``"$1"``: the script is the author's, the argument stays data.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from legato.tools.base import BadToolArgsError, ToolContext, ToolResult, ToolSpec
from legato.tools.process import ResourceLimits, base_environment, run_process

_MIB = 1 << 20
# Markers a process prints when an allocation failed; used to tell a memory-limit death from a bug.
_OOM_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")


def _parse_template(element: str, where: str) -> list[str]:
    """Names of the `{name}` placeholders in one argv element (`{{`/`}}` are literal braces)."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(element))
    except ValueError as exc:
        raise ValueError(
            f"{where}: {exc} in {element!r} (write literal braces as '{{{{' and '}}}}')"
        ) from exc
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            raise ValueError(
                f"{where}: placeholder {{{field}}} in {element!r} must be a plain argument name like {{path}}"
            )
        if spec or conversion:
            raise ValueError(f"{where}: placeholder {{{field}}} in {element!r} must not have a format spec")
        names.append(field)
    return names


def _as_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        text = str(value)
    else:
        raise BadToolArgsError(f"argument {name!r} must be a string or a number, got {type(value).__name__}")
    if "\x00" in text:
        raise BadToolArgsError(f"argument {name!r} contains a NUL byte, which cannot be passed to a program")
    return text


class SubprocessTool:
    """A tool that runs a program in the run's workdir, sandboxed by resource limits and a timeout.

    Output is ``{"exit_code", "stdout", "stderr", "truncated"}``. A non-zero exit is still
    ``ok=True`` (the tool ran; the model reads the exit code), except when it is recognisably the
    memory limit (``limit``). Death by a signal is ``killed`` (``limit`` for SIGXCPU, the CPU
    limit), the timeout is ``timeout``, a run released while the tool ran is ``cancelled``.

    Limits and their edges: `memory_bytes` caps the address space (RLIMIT_AS), not resident memory,
    so runtimes that reserve large virtual ranges (JVM, Go, Node) need a generous value. The
    environment is minimal (PATH, locale, HOME/TMPDIR in the workdir, plus `env`) unless
    `inherit_env=True`; `LEGATO_RUN_ID` and `LEGATO_IDEMPOTENCY_KEY` (see `ToolContext`) are
    always set. A descendant that calls setsid() leaves the process group and escapes the
    group kill; containing those needs a container or cgroup around the server.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        pure: bool = False,
        idempotent: bool = False,
        timeout: float = 30.0,
        cpu_seconds: int | None = None,
        memory_bytes: int | None = None,
        max_output_bytes: int = _MIB,
        max_open_files: int = 256,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = False,
        stdin_arg: str | None = None,
        description: str = "",
        expected_latency: float | None = None,
    ) -> None:
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(
                f"tool {name!r}: argv must be a non-empty list of strings, e.g. ['ls', '{{path}}']"
            )
        if _parse_template(argv[0], f"tool {name!r}"):
            raise ValueError(
                f"tool {name!r}: the program argv[0]={argv[0]!r} cannot be a placeholder; "
                "arguments may only fill later argv entries"
            )
        placeholders: list[str] = []
        for element in argv[1:]:
            for field in _parse_template(element, f"tool {name!r}"):
                if field not in placeholders:
                    placeholders.append(field)
        if stdin_arg is not None and not stdin_arg.isidentifier():
            raise ValueError(f"tool {name!r}: stdin_arg {stdin_arg!r} must be a plain argument name")
        if max_output_bytes < 1:
            raise ValueError(f"tool {name!r}: max_output_bytes must be >= 1")
        self.argv = list(argv)
        self.placeholders = tuple(placeholders)
        self.stdin_arg = stdin_arg
        self.limits = ResourceLimits(
            cpu_seconds=cpu_seconds, memory_bytes=memory_bytes, max_open_files=max_open_files
        )
        self.max_output_bytes = max_output_bytes
        self.env = dict(env) if env else {}
        self.inherit_env = inherit_env
        arg_names = [*placeholders, *([stdin_arg] if stdin_arg and stdin_arg not in placeholders else [])]
        self.arg_names = tuple(arg_names)
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {n: {"type": "string"} for n in arg_names},
            "required": list(arg_names),
            "additionalProperties": False,
        }
        self._spec = ToolSpec(
            name=name,
            kind="subprocess",
            pure=pure,
            idempotent=idempotent,
            timeout_s=timeout,
            description=description,
            expected_latency_s=expected_latency,
            params_schema=schema,
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    def validate_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(args, Mapping):
            raise BadToolArgsError(f"arguments must be an object, got {type(args).__name__}")
        problems: list[str] = []
        missing = [n for n in self.arg_names if n not in args]
        if missing:
            problems.append("missing argument(s) " + ", ".join(repr(n) for n in missing))
        unknown = [str(k) for k in args if k not in self.arg_names]
        if unknown:
            expected = ", ".join(repr(n) for n in self.arg_names) or "none"
            problems.append(f"unexpected argument(s) {', '.join(map(repr, unknown))} (expected: {expected})")
        if problems:
            raise BadToolArgsError("; ".join(problems))
        return {n: _as_text(n, args[n]) for n in self.arg_names}

    def build_argv(self, args: Mapping[str, str]) -> list[str]:
        """The concrete argv: each element formatted on its own, so a value is never split or parsed."""
        return [self.argv[0], *(element.format_map(args) for element in self.argv[1:])]

    async def invoke(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if ctx.processes is not None and ctx.processes.closed:
            return ToolResult.failure(
                "cancelled", f"tool {self.spec.name!r}: the run's environment was released"
            )
        argv = self.build_argv(args)
        stdin = args[self.stdin_arg].encode() if self.stdin_arg is not None else None
        try:
            outcome = await run_process(
                argv,
                cwd=ctx.workdir,
                env={
                    **base_environment(ctx.workdir, self.env, inherit=self.inherit_env),
                    "LEGATO_RUN_ID": ctx.run_id,
                    "LEGATO_IDEMPOTENCY_KEY": ctx.idempotency_key,
                },
                timeout_s=self.spec.timeout_s,
                limits=self.limits,
                max_output_bytes=self.max_output_bytes,
                stdin_data=stdin,
                processes=ctx.processes,
            )
        except OSError as exc:
            return ToolResult.failure("exception", f"tool {self.spec.name!r} could not start: {exc}")
        output: dict[str, Any] = {
            "exit_code": outcome.returncode,
            "stdout": outcome.stdout.decode("utf-8", errors="replace"),
            "stderr": outcome.stderr.decode("utf-8", errors="replace"),
            "truncated": outcome.stdout_truncated or outcome.stderr_truncated,
        }
        name = self.spec.name
        if outcome.ending == "timeout":
            return ToolResult.failure(
                "timeout", f"tool {name!r} timed out after {self.spec.timeout_s:g}s and was killed", output
            )
        if outcome.ending == "released":
            return ToolResult.failure("cancelled", f"tool {name!r} was stopped: the run was released", output)
        if outcome.ending == "signaled":
            sig = outcome.signal_name
            # A process that ignores SIGXCPU gets SIGKILL at the hard limit a second later; that is
            # indistinguishable from an external kill -9, so it is reported as `killed`.
            if sig == "SIGXCPU":
                return ToolResult.failure(
                    "limit", f"tool {name!r} exceeded its CPU limit of {self.limits.cpu_seconds}s", output
                )
            return ToolResult.failure("killed", f"tool {name!r} was killed by {sig}", output)
        if outcome.returncode == 127 and outcome.stderr.startswith(b"legato: cannot execute"):
            message = outcome.stderr.decode("utf-8", errors="replace").strip().removeprefix("legato: ")
            return ToolResult.failure("exception", f"tool {name!r}: {message}", output)
        if outcome.returncode and self.limits.memory_bytes is not None and self._looks_oom(outcome.stderr):
            return ToolResult.failure(
                "limit",
                f"tool {name!r} ran out of memory (limit {self.limits.memory_bytes} bytes, "
                f"exit code {outcome.returncode})",
                output,
            )
        return ToolResult(ok=True, output=output)

    @staticmethod
    def _looks_oom(stderr: bytes) -> bool:
        tail = stderr[-4096:].decode("utf-8", errors="replace")
        return any(marker in tail for marker in _OOM_MARKERS)
