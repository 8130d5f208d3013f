"""Speculative decoding in the torch engine (opt-in: `EngineCore.speculator`).

Between steps no sequence holds unverified tokens. At the start of a step the speculator
appends a draft to each decoding sequence (`Sequence.num_draft` of them), so the
scheduler schedules the last token plus the draft as one chunk and the model runner returns a
row of logits per position. After the forward pass `finish_step`:

- verifies each draft: greedy requests with `spec_verify.verify_greedy` (the longest prefix
  equal to the target's argmax, plus the target's own next token: token-identical to decoding
  without speculation), sampled ones with `verify_sampled` (rejection sampling against the
  distribution the sampler would draw from: the same output distribution);
- publishes to the prefix cache only blocks made of verified tokens (the commit runs with the
  draft cut back to its accepted prefix), and counts as computed only the verified positions;
  the KV written for rejected positions is rolled back: blocks that hold nothing but rejected
  positions go back to the pool (never into the prefix cache), and the rest is overwritten by
  the next tokens (the model runner's decode workspace row likewise restarts at the first
  rejected position);
- emits accepted tokens one by one through the engine's normal path, so stop tokens, stop
  strings and max_tokens apply to each.

A sequence that is preempted, or whose chunk the token budget cut short, drops its draft before
the forward pass. Drafts come from `legato.spec`: per request its prompt and output so far (an
agent's prompt holds its program's history), and the finished outputs of earlier requests (one
engine-wide history: requests carry no program name), with a per-request adaptive length cut by the back-off
(`legato.spec.backoff`: only draft tokens that raise the step's expected tokens per second).
Requests with n > 1, penalties, logit bias, logprobs or a grammar do not speculate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from legato.engine_adapter.torch.draft_model import DraftModelDrafter
from legato.engine_adapter.torch.model import LlamaForCausalLM
from legato.engine_adapter.torch.outputs import RequestOutput
from legato.engine_adapter.torch.sampler import needs_processing
from legato.engine_adapter.torch.scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from legato.engine_adapter.torch.sequence import SeqStatus, Sequence
from legato.engine_adapter.torch.spec_verify import verify_greedy, verify_sampled
from legato.spec.adaptive import check_draft_len
from legato.spec.backoff import AcceptanceCalibration, StepCostModel, plan_drafts, size_bucket
from legato.spec.context import AgentHistory, ProgramContext
from legato.spec.drafter import MODEL_DRAFTER, Drafter, make_drafter
from legato.spec.suffix_index import Draft

if TYPE_CHECKING:
    from legato.engine_adapter.base import TopLogprobs


class SpecCore(Protocol):
    """What the speculator uses of the engine core it drafts for (`core.EngineCore`, which owns
    the speculator, so this module does not import it)."""

    generated_tokens: int
    _default_gen: torch.Generator  # draws of requests without a seed of their own

    @property
    def scheduler(self) -> Scheduler: ...

    def _append_token(
        self, seq: Sequence, token: int, logprob: float | None, top: TopLogprobs | None
    ) -> RequestOutput: ...


AGENT = "engine"  # the engine sees no program names: its history is engine-wide, like SuffixDecoding's


@dataclass(slots=True)
class _Request:
    """A speculating request's drafting state and counters."""

    seq: Sequence
    ctx: ProgramContext
    indexed: int = 0  # tokens of seq.token_ids already in ctx.index
    calibration: AcceptanceCalibration = field(default_factory=AcceptanceCalibration)
    probs: tuple[float, ...] = ()  # the drafter's estimates for the draft being verified


@dataclass(slots=True)
class _BackOff:
    """Drafting's cost (the drafters' own time per drafting step) against what its steps saved,
    at one size of batch (a `StepCostModel` bucket of the step's decode tokens), averaged like a
    step-cost bucket; while it costs more than it saves, only one step in ceil(cost / saving)
    drafts (at most one per verify-model memory). Per size, because the saving is: a draft that
    pays at batch 1 may not at batch 32, and a global average would let one drive the other."""

    drafting_s: float = 0.0
    saving_s: float = 0.0
    steps: int = 0
    skip: int = 0  # steps of this size left that do not draft


class Speculator:
    """`drafter`: the engine's default (None: only requests asking for speculation speculate);
    `max_draft`: the default longest draft; `draft_model`: what the `draft-model` drafter runs
    (the engine's, `EngineConfig.draft_model`). A request's `SamplingParams.speculative`
    overrides the drafter and the length for that request."""

    def __init__(
        self,
        drafter: str | None = "suffix",
        max_draft: int = 4,
        *,
        draft_model: LlamaForCausalLM | None = None,
    ) -> None:
        check_draft_len(max_draft, "max draft length")
        self.default = drafter
        self.draft_model = draft_model
        self._drafters: dict[str, Drafter] = {}
        if drafter is not None:
            self._drafters[drafter] = self._make_drafter(drafter)
        self.max_draft = max_draft
        self.history = AgentHistory()
        # the back-off's cost models, fed by the core's step times (backoff.py): steps that
        # verify drafts (the model's multi-token path) and plain decode steps
        self.verify_cost = StepCostModel()
        self.decode_cost = StepCostModel()
        self.calibration = AcceptanceCalibration()  # every request's drafts: new requests' prior
        self._step_kind: StepCostModel | None = None  # which model this step's time belongs to
        self._since_verify = 0  # decode steps since a step verified a draft
        self._backoff: dict[int, _BackOff] = {}  # by `size_bucket` of the step's decodes
        self._drafted_step: tuple[float, int, int] | None = None  # this step's drafting time, base,
        # and the draft tokens it accepted
        self._reqs: dict[str, _Request] = {}
        self.drafted = 0
        self.accepted = 0
        self.verify_steps = 0
        self.drafted_by_position: list[int] = []  # verify steps whose draft reached position i
        self.accepted_by_position: list[int] = []  # ... and whose token at position i was accepted
        self._pending: list[tuple[Sequence, list[int]]] = []  # verified, not yet emitted (one step)
        self._drafted: list[Sequence] = []  # sequences given a draft this step

    def learn_costs_from(self, other: Speculator) -> None:
        """Start from what `other` measured of this engine's steps: the back-off's step cost
        models and its drafting back-off, copied (timing only; the drafters' history and the
        acceptance calibration come from text and stay this speculator's own). A serving engine
        keeps one speculator, so its back-off is learned once over its life; a benchmark that
        starts a speculator per short run would otherwise measure that learning each time."""
        self.verify_cost = copy.deepcopy(other.verify_cost)
        self.decode_cost = copy.deepcopy(other.decode_cost)
        self._backoff = copy.deepcopy(other._backoff)

    def _request(self, seq: Sequence) -> _Request:
        req = self._reqs.get(seq.request_id)
        if req is None:
            opts = seq.sampling.speculative
            max_draft = opts.num_tokens if opts is not None else self.max_draft
            # a new request's calibration starts from the engine's (one pseudo-step, as
            # AcceptanceCalibration's own prior): drafters overrate their drafts alike across
            # requests, and a short request verifies too few drafts to learn that on its own
            ratio = self.calibration.accepted / self.calibration.promised
            calibration = AcceptanceCalibration(promised=1.0, accepted=ratio)
            req = _Request(
                seq, ProgramContext(AGENT, self.history, max_draft=max_draft), calibration=calibration
            )
            self._reqs[seq.request_id] = req
        req.ctx.index.extend(seq.token_ids[req.indexed :])
        req.indexed = len(seq.token_ids)
        return req

    def _forget_finished(self) -> None:
        """Drop the state of finished requests; a completed output joins the history."""
        for rid, req in list(self._reqs.items()):
            seq = req.seq
            if seq.status is not SeqStatus.FINISHED:
                continue
            del self._reqs[rid]
            if seq.finish_reason in ("stop", "length"):
                self.history.add_output(AGENT, seq.token_ids[seq.num_prompt_tokens :])

    def observe_step(self, spans: list[tuple[int, int]], seconds: float) -> None:
        """The core's time of one step computing `spans`: what the back-off prices (steps that
        also prefill are neither kind and are not recorded). The step is priced without its
        drafting (weighed on its own, `_weigh_drafting`), so a decode step that drafted and
        verified nothing does not make plain decoding look dearer than it is."""
        kind, drafted = self._step_kind, self._drafted_step
        drafting_s = drafted[0] if drafted is not None else 0.0
        if kind is not None:
            kind.observe(sum(e - s for s, e in spans), seconds - drafting_s)
            self._since_verify = 0 if kind is self.verify_cost else self._since_verify + 1
        if drafted is not None and kind is not None:
            _, base, accepted = drafted
            saving = self._saving(kind, base, accepted, seconds - drafting_s)
            self._weigh_drafting(base, drafting_s, saving)
        self._step_kind = None
        self._drafted_step = None

    def _saving(self, kind: StepCostModel, base: int, accepted: int, seconds: float) -> float | None:
        """Seconds a decode-only step that drafted saved, drafting aside: for a verify step, what
        plain decode steps would have taken for the tokens it emitted less what it took (its
        measured time, not the plan's forecast: a miscalibrated plan shows here); nothing for a
        step that drafted but verified nothing; None while decode steps are unpriced."""
        if kind is self.decode_cost:
            return 0.0
        if not self.decode_cost.has_data or base <= 0:
            return None
        return (base + accepted) * self.decode_cost(base) / base - seconds

    def propose(
        self, running: list[Sequence], budget: int, max_model_len: int, clock: Callable[[], float]
    ) -> None:
        """Append drafts to the decoding sequences the step's token budget can verify,
        each cut to the length the back-off (`plan_drafts`) finds worth its price. `clock`:
        what the engine prices its steps in (the drafting's own cost is weighed in it)."""
        self._forget_finished()
        base = sum(s.num_tokens - s.num_computed_tokens == 1 for s in running)  # decodes anyway
        if base and not self.decode_cost.covers(base):
            # Plain decoding at this batch size is unmeasured: its price would be extrapolated
            # from smaller steps at their cost per token, too high for a concave cost, and make
            # verifying look cheap. One plain step measures it.
            return
        backoff = self._backoff.get(size_bucket(base))
        if backoff is not None and backoff.skip > 0:  # drafting has cost more than it saved
            backoff.skip -= 1
            return
        started = clock()
        proposed: list[tuple[_Request, Draft]] = []
        for seq in sorted(running, key=lambda s: s.sort_key):
            left = seq.num_tokens - seq.num_computed_tokens
            budget -= left
            if left != 1 or budget < 1 or seq.status is not SeqStatus.RUNNING:
                continue
            if not self._speculates(seq):
                continue
            req = self._request(seq)
            sp = seq.sampling
            room = min(
                req.ctx.draft_length.cap,
                budget,
                sp.max_tokens - seq.num_output_tokens - 1,
                max_model_len - seq.num_tokens - 1,
            )
            if room <= 0:
                continue
            draft = self._drafter(seq).propose(req.ctx, room)
            if draft.tokens:
                proposed.append((req, draft))
                budget -= len(draft.tokens)
        candidates = [req.calibration.adjust(d.probs) for req, d in proposed]
        if not self.verify_cost.fitted:
            # Unmeasured: verify whole drafts to measure the price, but at most doubling the
            # step's decode tokens plus one draft, so a probe at a large batch does not verify
            # every sequence's longest draft at once.
            plan = [len(c) for c in _cap_total(candidates, max(base, self.max_draft))]
        elif self._since_verify >= self.verify_cost.memory:
            # Backed off for as long as the verify model remembers: its price may be stale (the
            # machine or the text changed). What turns drafting back on is the first drafted
            # token's price, T(base + 1) against T(base), and its acceptance: verify the likeliest
            # one token. (Whole drafts here would cost a compute-bound engine, where a step costs
            # its tokens, a plain step's worth and more at every probe.)
            plan = _likeliest_token(candidates)
        else:
            plan = plan_drafts(candidates, base, self.verify_cost, self.decode_cost)
        self._drafted_step = (clock() - started, base, 0)  # accepted: added by verify_and_commit
        for (req, draft), keep in zip(proposed, plan, strict=True):
            if keep:
                seq = req.seq
                seq.token_ids.extend(draft.tokens[:keep])
                seq.num_draft = keep
                req.probs = draft.probs[:keep]
                self._drafted.append(seq)

    def _speculates(self, seq: Sequence) -> bool:
        """Whether the sequence's request drafts at all."""
        sp = seq.sampling
        if self._drafter_name(seq) is None:
            return False
        # Drafts are verified against the distribution temperature, top-k and top-p make of the
        # raw logits: not for biased or penalised requests, nor grammars (which mask the logits
        # and move their matcher one vetted token at a time).
        return not (sp.logprobs or sp.n > 1 or needs_processing(sp) or sp.grammar is not None)

    def _weigh_drafting(self, base: int, drafting_s: float, saving_s: float | None) -> None:
        """Average the drafting's cost and what its steps saved at this batch size (`base`
        decodes); while the saving is smaller, skip drafting on the next steps of that size so
        that it costs no more than it saves (a compute-bound batch, where no draft is worth
        verifying, then pays for drafting once per `verify_cost.memory` steps instead of every
        step)."""
        if saving_s is None or not self.verify_cost.fitted:
            return  # verifying is not priced yet: keep drafting to measure it
        b = self._backoff.setdefault(size_bucket(base), _BackOff())
        b.steps += 1
        w = 1.0 / min(b.steps, self.verify_cost.memory)
        b.drafting_s += w * (drafting_s - b.drafting_s)
        b.saving_s += w * (saving_s - b.saving_s)
        if b.saving_s >= b.drafting_s:
            return
        most = self.verify_cost.memory
        period = min(b.drafting_s / b.saving_s, most) if b.saving_s > 0 else most
        b.skip = math.ceil(period) - 1

    def skipping(self, base: int) -> int:
        """Steps with `base` decodes left that will not draft (the back-off's)."""
        b = self._backoff.get(size_bucket(base))
        return b.skip if b is not None else 0

    def _drafter_name(self, seq: Sequence) -> str | None:
        opts = seq.sampling.speculative
        name = opts.drafter if opts is not None else self.default
        return None if name == "none" else name

    def _drafter(self, seq: Sequence) -> Drafter:
        name = self._drafter_name(seq)
        assert name is not None
        drafter = self._drafters.get(name)
        if drafter is None:
            drafter = self._drafters[name] = self._make_drafter(name)
        return drafter

    def _make_drafter(self, name: str) -> Drafter:
        """A drafter by name; `draft-model` runs this speculator's draft model."""
        if name != MODEL_DRAFTER:
            return make_drafter(name)
        if self.draft_model is None:
            raise ValueError(f"drafter {MODEL_DRAFTER!r} needs a draft model; none was given")
        return DraftModelDrafter(self.draft_model)

    @staticmethod
    def drop(seq: Sequence) -> None:
        if seq.num_draft:
            del seq.token_ids[len(seq.token_ids) - seq.num_draft :]
            seq.num_draft = 0

    def after_schedule(self, plan: SchedulerOutput) -> None:
        """Drop drafts of preempted or unscheduled sequences and of chunks the budget cut short."""
        scheduled = {id(c.seq) for c in plan.chunks}
        decode_only = all(
            c.num_tokens == 1 + c.seq.num_draft and c.seq.num_computed_tokens >= c.seq.num_prompt_tokens
            for c in plan.chunks
        )
        for seq in self._drafted:
            if id(seq) not in scheduled:
                self.drop(seq)
        self._drafted = []
        for chunk in plan.chunks:
            seq = chunk.seq
            if seq.num_draft and chunk.num_tokens != 1 + seq.num_draft:
                self.drop(seq)
                chunk.num_tokens = 1
        drafted = any(c.seq.num_draft for c in plan.chunks)
        if not decode_only:
            # Index the prompts being prefilled now, a cost of the prompt (linear in its length,
            # like its forward pass) rather than of the first decode step that drafts for it:
            # charged there, it would make drafting look dear to the back-off.
            for chunk in plan.chunks:
                seq = chunk.seq
                if seq.num_computed_tokens < seq.num_prompt_tokens and self._speculates(seq):
                    self._request(seq)
        self._step_kind = (self.verify_cost if drafted else self.decode_cost) if decode_only else None

    def verify_and_commit(
        self,
        core: SpecCore,
        chunks: list[ScheduledChunk],
        sampled: list[ScheduledChunk],
        logits: torch.Tensor,
    ) -> tuple[list[ScheduledChunk], torch.Tensor | None]:
        """Verify every draft, cut it back to its accepted prefix and commit every chunk (so the
        prefix cache sees verified tokens only). Returns the chunks that did not speculate and
        their rows of logits, for the engine to sample as usual; `emit` produces the outputs of
        the verified ones."""
        self._pending = []
        plain: list[ScheduledChunk] = []
        plain_rows: list[int] = []
        row = 0
        for chunk in sampled:
            seq = chunk.seq
            g = seq.num_draft
            if not g:
                plain.append(chunk)
                plain_rows.append(row)
                row += 1
                continue
            draft, rows = seq.token_ids[len(seq.token_ids) - g :], logits[row : row + g + 1]
            sp = seq.sampling
            if sp.temperature == 0.0 or sp.top_k == 1:
                emitted = verify_greedy(draft, rows)
            else:  # rejection sampling, with the request's own generator as the sampler would
                emitted = verify_sampled(draft, rows, sp, seq.generator or core._default_gen)
            row += g + 1
            a = len(emitted) - 1
            del seq.token_ids[len(seq.token_ids) - (g - a) :]  # keep the accepted prefix only
            seq.num_draft = 0
            chunk.num_tokens = 1 + a  # verified positions only count as computed
            self._pending.append((seq, emitted))
            seq.spec_drafted += g
            seq.spec_accepted += a
            self._record(seq.request_id, g, a)
            if self._drafted_step is not None:
                d, b, acc = self._drafted_step
                self._drafted_step = (d, b, acc + a)
        for chunk in chunks:
            core.scheduler.commit(chunk)
        for seq, _ in self._pending:
            _release_rejected_blocks(core.scheduler, seq)
        if not plain:
            return plain, None
        return plain, logits[torch.tensor(plain_rows, dtype=torch.long, device=logits.device)]

    def _record(self, request_id: str, drafted: int, accepted: int) -> None:
        req = self._reqs.get(request_id)
        if req is not None:
            req.ctx.draft_length.record(drafted, accepted)
            req.calibration.record(req.probs, accepted)
            self.calibration.record(req.probs, accepted)
        self.verify_steps += 1
        self.drafted += drafted
        self.accepted += accepted
        while len(self.drafted_by_position) < drafted:
            self.drafted_by_position.append(0)
            self.accepted_by_position.append(0)
        for i in range(drafted):
            self.drafted_by_position[i] += 1
            self.accepted_by_position[i] += int(i < accepted)

    def emit(self, core: SpecCore) -> list[RequestOutput]:
        """Outputs of the verified sequences: their tokens one by one, so stop tokens, stop
        strings and max_tokens apply to each."""
        outputs: list[RequestOutput] = []
        for seq, emitted in self._pending:
            accepted = len(emitted) - 1
            if accepted:
                del seq.token_ids[len(seq.token_ids) - accepted :]  # re-appended below, one by one
            for tok in emitted:
                out = core._append_token(seq, tok, None, None)
                outputs.append(out)
                core.generated_tokens += 1
                if out.finished:
                    break
        self._pending = []
        return outputs


def _likeliest_token(candidates: list[list[float]]) -> list[int]:
    """Keep one drafted token: the first of the draft most likely to be accepted."""
    keep = [0] * len(candidates)
    firsts = [(c[0], i) for i, c in enumerate(candidates) if c]
    if firsts:
        keep[max(firsts)[1]] = 1
    return keep


def _cap_total(candidates: list[list[float]], total: int) -> list[list[float]]:
    """The candidate drafts cut, most promising tokens first, to `total` tokens in all."""
    order = sorted(
        ((p, i, j) for i, c in enumerate(candidates) for j, p in enumerate(c)),
        key=lambda t: (-t[0], t[2], t[1]),
    )
    keep = [0] * len(candidates)
    for _, i, j in order[:total]:
        keep[i] = max(keep[i], j + 1)  # probabilities are non-increasing: prefixes are taken
    return [c[:k] for c, k in zip(candidates, keep, strict=True)]


def _release_rejected_blocks(scheduler: Scheduler, seq: Sequence) -> None:
    """Give back the blocks past a verified sequence's computed tokens: they were allocated for
    its draft and hold only rejected positions (private, never registered in the prefix cache)."""
    keep = -(-seq.num_computed_tokens // scheduler.block_size)
    extra = seq.block_table[keep:]
    if extra:
        del seq.block_table[keep:]
        scheduler.blocks.release(list(reversed(extra)))
