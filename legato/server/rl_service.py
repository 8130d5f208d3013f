"""`RolloutService`: what the RL routes share. Every generation goes through the proxy's program
machinery (`Proxy.start`), so a rollout is scheduled as a program: its id is the program id, the
policy keeps its KV between turns and routes it to one replica. Rollout records
(`legato.rl.Rollout`) are kept per tenant until finished.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from fastapi import Request, Response

from legato.engine_adapter.base import Engine, GenerateRequest, SamplingParams
from legato.engine_adapter.server.lifecycle import collect_or_abort
from legato.engine_adapter.server.openai_fields import top_logprobs_of
from legato.rl.control import RLControl
from legato.rl.rollout import Rollout, SampleOutput, assemble_outputs
from legato.server.auth import Tenant
from legato.server.errors import ApiError
from legato.server.proxy import Proxy
from legato.server.proxy_generation import placed, server_errors
from legato.server.proxy_models import ProgramFields
from legato.server.rl_models import RLSampling, TurnOut

MAX_ROLLOUTS_PER_TENANT = 100_000  # records are small; this only bounds a client that never finishes


@dataclass
class _Running:
    call_id: str
    stop: anyio.Event = field(default_factory=anyio.Event)


class RolloutService:
    def __init__(self, proxy: Proxy, engines: Sequence[Engine]) -> None:
        self.proxy = proxy
        self.control = RLControl(engines)
        self.rollouts: dict[tuple[str, str], Rollout] = {}
        self._per_tenant: dict[str, int] = {}
        self.running: dict[tuple[str, str], _Running] = {}  # (tenant, program id) -> its call

    # --- generation through the program scheduler ------------------------------------------

    def sampling(self, sp: RLSampling, prompt_len: int, n: int = 1) -> SamplingParams:
        svc = self.proxy.svc
        with server_errors():
            if sp.stop_token_ids:
                svc.check_tokens(sp.stop_token_ids, "sampling_params.stop_token_ids")
            return svc.sampling(
                max_tokens=sp.max_tokens,
                max_tokens_field="sampling_params.max_tokens",
                prompt_len=prompt_len,
                temperature=sp.temperature,
                top_p=sp.top_p,
                top_k=sp.top_k,
                seed=sp.seed,
                stop=None,
                stop_token_ids=sp.stop_token_ids,
                ignore_eos=sp.ignore_eos,
                logprobs=True,
                top_logprobs=top_logprobs_of(svc.engine, sp.top_logprobs, "sampling_params.top_logprobs"),
                n=n,
            )

    async def generate(
        self,
        tenant: Tenant,
        program_id: str | None,
        prompt: tuple[int, ...],
        sampling: SamplingParams,
        raw: Request,
        *,
        node: str = "rl",
        request_id: str | None = None,
        group: tuple[str, int] | None = None,
        reply: Response | None = None,
    ) -> list[SampleOutput] | None:
        """One call of the program `program_id` (None: a call of its own); None if the client
        went away. `abort` on the program returns the partial tokens with reason "abort".
        `group`: (group id, its shared prompt's length) for a GRPO group's rollout. `reply`:
        the response that names the replica which ran the call (`X-Legato-Replica`)."""
        rid = request_id or f"rl-{uuid.uuid4().hex}"
        name = program_id if program_id is not None else request_id  # what `abort` finds it by
        key = (tenant.id, name) if name is not None else None
        if key is not None and key in self.running:
            raise ApiError(409, f"{name!r} already has a call running", param="program_id")
        req = GenerateRequest(request_id=rid, prompt_token_ids=prompt, sampling=sampling)
        running = _Running(rid)
        if key is not None:
            self.running[key] = running
        try:
            fields = ProgramFields(program_id=program_id)
            generation = await self.proxy.start(tenant, fields, req, node, group)
            if reply is not None:
                placed(reply, generation)
            with server_errors():
                chunks = await collect_or_abort(raw, generation, running.stop)
        finally:
            if key is not None:
                self.running.pop(key, None)
        if chunks is None:
            return None
        return assemble_outputs(chunks, sampling.n)

    def abort(self, tenant: Tenant, name: str) -> bool:
        """End the call in flight of the program (or with the request id) `name`; its partial
        tokens are returned to its caller with reason "abort"."""
        running = self.running.get((tenant.id, name))
        if running is None:
            mine = (r for (t, _), r in self.running.items() if t == tenant.id and r.call_id == name)
            running = next(mine, None)
        if running is None:
            return False
        running.stop.set()
        return True

    # --- rollout records ---------------------------------------------------------------------

    def get(self, tenant: Tenant, rollout_id: str) -> Rollout:
        rollout = self.rollouts.get((tenant.id, rollout_id))
        if rollout is None:
            raise ApiError(404, f"no rollout {rollout_id!r} for this tenant", param="rollout_id")
        return rollout

    def add(self, rollout: Rollout) -> None:
        if self._per_tenant.get(rollout.tenant, 0) >= MAX_ROLLOUTS_PER_TENANT:
            raise ApiError(429, "too many unfinished rollouts: finish some first", retry_after_s=1.0)
        key = (rollout.tenant, rollout.rollout_id)
        if key in self.rollouts:
            raise ApiError(409, f"rollout {rollout.rollout_id!r} exists", param="rollout_id")
        self.rollouts[key] = rollout
        self._per_tenant[rollout.tenant] = self._per_tenant.get(rollout.tenant, 0) + 1

    def drop(self, tenant: str, rollout_id: str) -> Rollout | None:
        rollout = self.rollouts.pop((tenant, rollout_id), None)
        if rollout is not None:
            self._per_tenant[tenant] -= 1
        return rollout

    def finish(self, tenant: Tenant, program_id: str) -> Rollout | None:
        """End a rollout / session: its record and its program (KV no longer kept). Raises 404
        when neither exists."""
        self.abort(tenant, program_id)
        rollout = self.drop(tenant.id, program_id)
        program = self.proxy.tracker.release(tenant.id, program_id)
        if rollout is None and program is None:
            raise ApiError(404, f"no live session {program_id!r} for this tenant", param="session_id")
        return rollout


def turn_out(rollout: Rollout, out: SampleOutput) -> TurnOut:
    return TurnOut(
        rollout_id=rollout.rollout_id,
        token_ids=out.token_ids,
        logprobs=out.logprobs,
        top_logprobs=[[[token, lp] for token, lp in t] for t in out.top_logprobs]
        if out.top_logprobs
        else None,
        weight_versions=out.weight_versions,
        weight_version=out.weight_version,
        finish_reason=out.finish_reason,
        cached_tokens=out.cached_tokens,
        num_turns=rollout.num_turns,
    )
