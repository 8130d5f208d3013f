"""Speculative decoding in the torch engine (opt-in: `EngineCore.speculator`), greedy requests.

Between steps no sequence holds unverified tokens. At the start of a step the speculator
appends a draft to each greedy decoding sequence (`Sequence.num_draft` of them), so the
scheduler schedules the last token plus the draft as one chunk and the model runner returns a
row of logits per position. After the forward pass `finish_step`:

- verifies each draft (`spec_verify.verify_greedy`: the longest prefix equal to the target's
  argmax, plus the target's own next token), so the output is token-identical to decoding
  without speculation;
- publishes to the prefix cache only blocks made of verified tokens (the commit runs with the
  draft cut back to its accepted prefix), and counts as computed only the verified positions:
  the KV written for rejected positions is overwritten by the next tokens (their blocks stay in
  the sequence's table, never in the cache, and are freed with it);
- emits accepted tokens one by one through the engine's normal path, so stop tokens, stop
  strings and max_tokens apply to each.

A sequence that is preempted, or whose chunk the token budget cut short, drops its draft before
the forward pass. Drafts come from `legato.spec`: per request its prompt and output so far (an
agent's prompt holds its program's history), and the finished outputs of earlier requests (one
engine-wide history: requests carry no program name), with a per-request adaptive length. Only
plain greedy requests speculate (not sampled, n > 1, penalised, biased, logprob or
grammar-constrained requests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from legato.engine_adapter.torch.outputs import RequestOutput
from legato.engine_adapter.torch.sampler import needs_processing
from legato.engine_adapter.torch.scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from legato.engine_adapter.torch.sequence import SeqStatus, Sequence
from legato.engine_adapter.torch.spec_verify import verify_greedy
from legato.spec.adaptive import check_draft_len
from legato.spec.context import AgentHistory, ProgramContext
from legato.spec.drafter import make_drafter

if TYPE_CHECKING:
    from legato.engine_adapter.base import TopLogprobs


class SpecCore(Protocol):
    """What the speculator uses of the engine core it drafts for (`core.EngineCore`, which owns
    the speculator, so this module does not import it)."""

    generated_tokens: int

    @property
    def scheduler(self) -> Scheduler: ...

    def _append_token(
        self, seq: Sequence, token: int, logprob: float | None, top: TopLogprobs | None
    ) -> RequestOutput: ...


AGENT = "engine"  # the engine sees no program names: its history is engine-wide, like SuffixDecoding's


class Speculator:
    def __init__(self, drafter: str = "suffix", max_draft: int = 4) -> None:
        check_draft_len(max_draft, "max draft length")
        self.drafter = make_drafter(drafter)
        self.max_draft = max_draft
        self.history = AgentHistory()
        # request -> (its sequence, context, tokens indexed)
        self._ctx: dict[str, tuple[Sequence, ProgramContext, int]] = {}
        self.drafted = 0
        self.accepted = 0
        self.verify_steps = 0
        self._pending: list[tuple[Sequence, list[int]]] = []  # verified, not yet emitted (one step)
        self._drafted: list[Sequence] = []  # sequences given a draft this step

    def _context(self, seq: Sequence) -> ProgramContext:
        entry = self._ctx.get(seq.request_id)
        ctx, indexed = (entry[1], entry[2]) if entry is not None else (None, 0)
        if ctx is None:
            ctx = ProgramContext(AGENT, self.history, max_draft=self.max_draft)
        ctx.index.extend(seq.token_ids[indexed:])
        self._ctx[seq.request_id] = (seq, ctx, len(seq.token_ids))
        return ctx

    def _forget_finished(self) -> None:
        """Drop the contexts of finished requests; a completed output joins the history."""
        for rid, (seq, _, _) in list(self._ctx.items()):
            if seq.status is not SeqStatus.FINISHED:
                continue
            del self._ctx[rid]
            if seq.finish_reason in ("stop", "length"):
                self.history.add_output(AGENT, seq.token_ids[seq.num_prompt_tokens :])

    def propose(self, running: list[Sequence], budget: int, max_model_len: int) -> None:
        """Append drafts to the greedy decoding sequences the step's token budget can verify."""
        self._forget_finished()
        for seq in sorted(running, key=lambda s: s.sort_key):
            left = seq.num_tokens - seq.num_computed_tokens
            budget -= left
            if left != 1 or budget < 1 or seq.status is not SeqStatus.RUNNING:
                continue
            sp = seq.sampling
            greedy = sp.temperature == 0.0 or sp.top_k == 1
            if not greedy or sp.logprobs or sp.n > 1 or needs_processing(sp) or sp.grammar is not None:
                # The draft is checked against the raw argmax: plain greedy requests only (a
                # grammar masks the argmax and moves its matcher one vetted token at a time).
                continue
            ctx = self._context(seq)
            room = min(
                ctx.draft_length.cap,
                budget,
                sp.max_tokens - seq.num_output_tokens - 1,
                max_model_len - seq.num_tokens - 1,
            )
            if room <= 0:
                continue
            draft = self.drafter.propose(ctx, room).tokens
            seq.token_ids.extend(draft)
            seq.num_draft = len(draft)
            budget -= len(draft)
            if draft:
                self._drafted.append(seq)

    @staticmethod
    def drop(seq: Sequence) -> None:
        if seq.num_draft:
            del seq.token_ids[len(seq.token_ids) - seq.num_draft :]
            seq.num_draft = 0

    def after_schedule(self, plan: SchedulerOutput) -> None:
        """Drop drafts of preempted or unscheduled sequences and of chunks the budget cut short."""
        scheduled = {id(c.seq) for c in plan.chunks}
        for seq in self._drafted:
            if id(seq) not in scheduled:
                self.drop(seq)
        self._drafted = []
        for chunk in plan.chunks:
            seq = chunk.seq
            if seq.num_draft and chunk.num_tokens != 1 + seq.num_draft:
                self.drop(seq)
                chunk.num_tokens = 1

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
            emitted = verify_greedy(seq.token_ids[len(seq.token_ids) - g :], logits[row : row + g + 1])
            row += g + 1
            a = len(emitted) - 1
            del seq.token_ids[len(seq.token_ids) - (g - a) :]  # keep the accepted prefix only
            seq.num_draft = 0
            chunk.num_tokens = 1 + a  # verified positions only count as computed
            self._pending.append((seq, emitted))
            entry = self._ctx.get(seq.request_id)
            if entry is not None:
                entry[1].draft_length.record(g, a)
            self.verify_steps += 1
            self.drafted += g
            self.accepted += a
        for chunk in chunks:
            core.scheduler.commit(chunk)
        if not plain:
            return plain, None
        return plain, logits[torch.tensor(plain_rows, dtype=torch.long, device=logits.device)]

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
