"""The n-gram guard's self-test: a canary that tells an active guard from one vLLM ignores.

DeepSeek-OCR needs its no-repeat n-gram guard (vLLM's `NGramPerReqLogitsProcessor`):
without it a hard page loops until max_tokens, 8,192 tokens of repetition. vLLM
applies the processor only in its V1 model runner, and newer releases choose the V2
runner on GPUs (vLLM 0.32 does where Triton is installed, and then refuses the
processor at start); a guard that is registered but not applied fails silently. So
the engine proves the guard at start: one page goes twice, greedily and past EOS,
once with a small n-gram rule and once without, and the two outputs are compared
with the guard's own rule (`repeated_ngrams`):

- with the rule, an applied guard leaves no repeated n-gram at all (it bans exactly
  those tokens), so any repeat means the guard is not applied: the engine refuses
  to start;
- without the rule, the same page must repeat, or the check proves nothing (a model
  that never loops on the canary page): that is logged, not fatal.

Random weights loop at once (measured on the tiny CPU model: 124 of 128 tokens
repeat a 3-gram without the rule, 0 with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ocr_service.deepseek import PROMPTS, repeated_ngrams

CANARY_PROMPT = PROMPTS["free"]
CANARY_SIDE = 64  # a blank 64 px page: one view, the cheapest image the model takes
CANARY_TOKENS = 128
CANARY_NGRAM = 3  # small, so a loop shows within a few tokens

# What to do when vLLM does not apply the guard.
GUARD_FIX = (
    "Run vLLM's V1 model runner, which applies DeepSeek-OCR's NGramPerReqLogitsProcessor: set "
    "VLLM_USE_V2_MODEL_RUNNER=0 in the service's environment (vLLM 0.32 picks the V2 runner wherever Triton is "
    "installed, so on GPUs, and V2 does not take that processor), or use vLLM 0.20.1, whose default is V1. "
    "Both 0.20.1 and 0.32.0 register the processor from the engine's arguments."
)


@dataclass(frozen=True)
class GuardCheck:
    """The canary's two outputs, and what they show."""

    ngram_size: int
    window_size: int
    guarded_ids: tuple[int, ...]  # generated with the n-gram rule in the request
    unguarded_ids: tuple[int, ...]  # the same page, no rule
    model_runner: str = "unknown"

    @cached_property
    def guarded_repeats(self) -> int:
        return repeated_ngrams(self.guarded_ids, self.ngram_size, self.window_size)

    @cached_property
    def unguarded_repeats(self) -> int:
        return repeated_ngrams(self.unguarded_ids, self.ngram_size, self.window_size)

    @property
    def applied(self) -> bool:
        """The guard shaped the guarded output: not one repeated n-gram in it."""
        return self.guarded_repeats == 0

    @property
    def conclusive(self) -> bool:
        """The page repeats without the rule, so a missing guard would have shown."""
        return self.unguarded_repeats > 0

    def summary(self) -> str:
        return (
            f"{self.ngram_size}-gram repeats in {len(self.guarded_ids)} tokens: {self.guarded_repeats} with the "
            f"guard's rule, {self.unguarded_repeats} without (model runner {self.model_runner})"
        )

    def failure(self) -> str:
        """Why the engine refuses to start when the guard is not applied."""
        if self.model_runner == "V1":
            why = (
                "The V1 runner applies the processor once it is registered, so this vLLM did not register it (an "
                "engine argument it lacks is dropped: see the log) or ignored the request's n-gram arguments."
            )
        else:
            why = "vLLM's V2 model runner does not take this processor."
        return (
            "vLLM does not apply DeepSeek-OCR's n-gram repetition guard: the start-up canary repeated "
            f"{self.guarded_repeats} {self.ngram_size}-grams in {len(self.guarded_ids)} tokens with the guard's "
            f"rule in the request (model runner {self.model_runner}). {why} Without the guard, every hard page "
            f"would loop to max_tokens. {GUARD_FIX}"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "ngram_size": self.ngram_size,
            "window_size": self.window_size,
            "tokens": len(self.guarded_ids),
            "guarded_repeats": self.guarded_repeats,
            "unguarded_repeats": self.unguarded_repeats,
            "applied": self.applied,
            "conclusive": self.conclusive,
            "model_runner": self.model_runner,
        }
