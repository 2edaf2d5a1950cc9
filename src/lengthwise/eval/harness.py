"""lm-eval-harness adapter: `LengthwiseHarnessLM` runs any EvalLM (a lengthwise GPT or a Hugging
Face causal LM folder, lengthwise/eval/lm.py) on lm-eval-harness tasks. Needs `lm_eval>=0.4`
(pip install 'lengthwise[harness]').

    from lm_eval import simple_evaluate
    from lengthwise.eval.harness import LengthwiseHarnessLM

    lm = LengthwiseHarnessLM.from_path("runs/my_run", batch_size=32)
    results = simple_evaluate(model=lm, tasks=["lambada_openai"])

The three request types, each `Instance.args`:
- `loglikelihood` ((context, continuation)): `EvalLM.loglikelihood`, batched. The EvalLM splits the
  text as lm-eval does for causal models (trailing context spaces move to the continuation; an
  empty context conditions on a single prefix token).
- `loglikelihood_rolling` ((text,)): the sum of the log-probabilities of every token of the text,
  each token predicted once, the first one conditioned on a prefix token (BOS where an HF
  tokenizer has one, else EOS: lengthwise models see EOS before every training document).
  With `max_length=None` (the default) the whole text is one window, scored as
  `EvalLM.loglikelihood([("", text)])`: batched, and nothing is truncated, since scoring beyond
  the training length is what lengthwise measures. With `max_length=N` the text is cut into
  lm-eval's rolling windows of N input tokens (`lm_eval.utils.get_rolling_token_windows`, one
  token of context, disjoint predictions), each scored from `EvalLM.token_losses` of the window;
  use it for models that cannot run past N positions (learned position tables).
- `generate_until` ((context, gen_kwargs)): `EvalLM.greedy`, batched per `max_gen_toks`
  (aliases max_new_tokens, max_tokens, max_completion_tokens; default `max_gen_toks` of the
  adapter), stopped at EOS, and the text cut before the first occurrence of any `until` string.
  Decoding is always greedy: sampling settings (do_sample, temperature, ...) are ignored with a
  warning. Generation does not stop early at a stop string, so a generous max_gen_toks costs
  time, not correctness.

Single process only (rank 0 of 1); chat templates are not supported.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from lengthwise.errors import UserError
from lengthwise.eval.lm import EvalLM


class HarnessNotInstalled(UserError, ImportError):
    """lm_eval is missing: a one-line UserError for the CLI, an ImportError for importers."""


try:
    from lm_eval.api.model import LM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:
    raise HarnessNotInstalled(
        f"lm-eval-harness is not installed ({e}): pip install 'lengthwise[harness]'"
    ) from e

log = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HFLM default
MAX_GEN_TOKS_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


def stop_strings(until: Any) -> list[str]:
    """The non-empty stop strings of a request's `until` (a string, a list or None)."""
    if until is None:
        return []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, list | tuple):
        raise ValueError(f"generate_until: `until` must be a string or a list, got {until!r}")
    return [s for s in until if s]


def cut_at_stop(text: str, until: list[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for s in until if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


class LengthwiseHarnessLM(LM):
    def __init__(
        self,
        lm: EvalLM,
        batch_size: int = 64,
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        if max_length is not None and max_length < 1:
            raise UserError(f"max_length must be at least 1 or None, got {max_length}")
        self.lm = lm
        self.batch_size = int(batch_size)
        self.max_length = max_length
        self.max_gen_toks = int(max_gen_toks)
        self._warned_sampling = False

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        device: str = "cpu",
        batch_size: int = 64,
        prompt_template: str = "{prompt}",
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
    ) -> LengthwiseHarnessLM:
        """A lengthwise run directory or export folder, or a Hugging Face causal LM folder (as
        `lengthwise eval` loads them)."""
        from lengthwise.eval.suites import load_lm

        lm = load_lm(Path(path), device=device, prompt_template=prompt_template)
        return cls(lm, batch_size=batch_size, max_length=max_length, max_gen_toks=max_gen_toks)

    @property
    def name(self) -> str:
        return self.lm.name

    @property
    def prefix_id(self) -> int:
        """The token the first token of a rolling text is conditioned on."""
        return int(getattr(self.lm, "prefix_id", self.lm.eos_id))

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        pairs = [(str(r.args[0]), str(r.args[1])) for r in requests]
        out = self.lm.loglikelihood(pairs, batch_size=self.batch_size)
        results = [(float(ll), bool(greedy)) for ll, greedy in out]
        for pair, res in zip(pairs, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, res)
        return results

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        texts = [str(r.args[0]) for r in requests]
        if self.max_length is None:
            scored = self.lm.loglikelihood([("", t) for t in texts], batch_size=self.batch_size)
            results = [float(ll) for ll, _ in scored]
        else:
            results = [self._rolling_windows(t) for t in texts]
        for text, res in zip(texts, results, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), res)
        return results

    def _rolling_windows(self, text: str) -> float:
        windows = get_rolling_token_windows(
            token_list=self.lm.encode(text),
            prefix_token=self.prefix_id,
            max_seq_len=self.max_length,
            context_len=1,
        )
        total = 0.0
        for ctx, pred in map(make_disjoint_window, windows):
            losses = self.lm.token_losses(ctx + pred)  # the last len(pred) predict `pred`
            total -= sum(losses[len(losses) - len(pred) :])
        return total

    def _max_gen_toks(self, gen_kwargs: dict[str, Any]) -> int:
        for key in MAX_GEN_TOKS_KEYS:
            if gen_kwargs.get(key) is not None:
                return int(gen_kwargs[key])
        return self.max_gen_toks

    def generate_until(self, requests: list[Any]) -> list[str]:
        jobs: list[tuple[str, dict[str, Any], list[str], int]] = []
        for r in requests:
            context, gen_kwargs = r.args[0], (r.args[1] if len(r.args) > 1 else None) or {}
            if not isinstance(gen_kwargs, dict):
                raise ValueError(f"generate_until: gen_kwargs must be a dict, got {gen_kwargs!r}")
            sampling = gen_kwargs.get("do_sample") or (gen_kwargs.get("temperature") or 0) > 0
            if sampling and not self._warned_sampling:
                log.warning("%s: sampling settings ignored, decoding is greedy", self.name)
                self._warned_sampling = True
            until = stop_strings(gen_kwargs.get("until"))
            jobs.append((str(context), gen_kwargs, until, self._max_gen_toks(gen_kwargs)))
        by_budget: dict[int, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            by_budget[job[3]].append(i)
        results = [""] * len(jobs)
        for budget, idx in by_budget.items():
            texts = self.lm.greedy([jobs[i][0] for i in idx], budget, batch_size=self.batch_size)
            for i, text in zip(idx, texts, strict=True):
                context, gen_kwargs, until, _ = jobs[i]
                results[i] = cut_at_stop(text, until)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), results[i])
        return results
