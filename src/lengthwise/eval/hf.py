"""`HFCausalLM`: the EvalLM protocol (lengthwise/eval/lm.py) for any Hugging Face causal LM folder
on disk (`save_pretrained` output: config.json, weights, tokenizer files), so every suite runs on
HF models exactly as on lengthwise GPTs. Needs `transformers` (pip install 'lengthwise[hf]').

- Loading is local only (`local_files_only=True`, `trust_remote_code=False`): a path that is not
  a folder is an error, never a hub repository name.
- `greedy`: the prompt template is applied to each prompt, then batched, LEFT-padded
  `model.generate(do_sample=False)` with the KV cache; a fresh greedy GenerationConfig is used,
  so sampling settings saved with the model (temperature, top_p, ...) never apply. The
  continuation is cut at the first stop token (the tokenizer's EOS and any EOS of the model's
  generation config), which is not included. An empty prompt starts from `prefix_id`.
- `loglikelihood`: raw (context, continuation) text, no template. Split as lm-eval-harness
  0.4 splits it for causal models: trailing spaces of the context move to the continuation, the
  continuation's tokens are those of encode(context + continuation) after encode(context) (so a
  token that merges across the boundary is not double counted); an empty context becomes
  [prefix_id] (BOS if the tokenizer has one, else EOS, like lm-eval's HFLM). Right-padded
  batches, one forward each; batches are also capped so the logits stay under ~1 GiB.
- `token_losses`: one forward over the whole sequence, no cache.

Nothing is truncated to the model's `max_position_embeddings`: evaluating beyond the training
length is the point of the length suites (RoPE models run past it; models with learned position
tables fail there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lengthwise.errors import UserError
from lengthwise.eval.lm import split_request

# cap on the logits one loglikelihood forward materializes (batch * length * vocab floats)
MAX_LOGIT_ELEMENTS = 2**28


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _dtype_kwarg() -> str:
    """`dtype` since transformers 4.56, `torch_dtype` before (deprecated since)."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _as_list(x: Any) -> list[int]:
    if x is None:
        return []
    if isinstance(x, int):
        return [x]
    return [int(i) for i in x]


class HFCausalLM:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str | torch.device = "cpu",
        prompt_template: str = "{prompt}",
        name: str = "hf",
    ) -> None:
        """A live `PreTrainedModel` (causal LM) and its tokenizer; `from_pretrained` loads a
        folder. The model is moved to `device` and put in eval mode."""
        if "{prompt}" not in prompt_template:
            raise UserError(f"prompt template {prompt_template!r} has no {{prompt}} placeholder")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.name = name
        gen_eos = _as_list(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = (gen_eos or _as_list(getattr(model.config, "eos_token_id", None)) or [None])[0]
        if eos is None:
            raise UserError(f"{name}: neither the tokenizer nor the model config has an EOS token")
        self._eos_id = int(eos)
        # generation stops at the tokenizer's EOS and at every EOS of the generation config
        # (chat models often end turns with a second one)
        self.stop_ids: list[int] = list(dict.fromkeys([self._eos_id, *gen_eos]))
        pad = tokenizer.pad_token_id
        self.pad_id: int = self._eos_id if pad is None else int(pad)
        bos = tokenizer.bos_token_id
        self.prefix_id: int = self._eos_id if bos is None else int(bos)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        prompt_template: str = "{prompt}",
        name: str | None = None,
    ) -> HFCausalLM:
        """Model and tokenizer of a Hugging Face causal LM folder; named after the folder."""
        path = Path(path)
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise UserError(
                f"{path}: loading a Hugging Face model needs transformers: "
                "pip install 'lengthwise[hf]'"
            ) from None
        if not path.is_dir():
            raise UserError(f"{path}: not a folder (expected a Hugging Face causal LM folder)")
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: no config.json, not a Hugging Face model folder")
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, **{_dtype_kwarg(): dtype}, trust_remote_code=False, local_files_only=True
            )
        except Exception as e:  # transformers raises many types for a bad folder
            raise UserError(f"{path}: not a loadable causal LM ({_first_line(e)})") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                path, trust_remote_code=False, local_files_only=True
            )
        except Exception as e:
            raise UserError(f"{path}: no usable tokenizer ({_first_line(e)})") from None
        if tokenizer is None or isinstance(tokenizer, bool):  # some versions return None/False
            raise UserError(f"{path}: no usable tokenizer")
        return cls(
            model,
            tokenizer,
            device=device,
            prompt_template=prompt_template,
            name=name if name is not None else (path.resolve().name or "hf"),
        )

    @property
    def eos_id(self) -> int:
        return self._eos_id

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def greedy(self, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
        """Greedy continuation of each templated prompt, stopped at EOS (not included) or after
        `max_new_tokens`; batched (longest prompts first), left-padded, with the KV cache."""
        from transformers import GenerationConfig

        if max_new_tokens <= 0 or not prompts:
            return [""] * len(prompts)
        ids = [
            self.encode(self.prompt_template.replace("{prompt}", p)) or [self.prefix_id]
            for p in prompts
        ]
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out: list[str] = [""] * len(ids)
        stop = set(self.stop_ids)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                T = max(len(ids[i]) for i in rows)
                x = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), T), dtype=torch.long)
                for b, i in enumerate(rows):
                    x[b, T - len(ids[i]) :] = torch.tensor(ids[i], dtype=torch.long)
                    mask[b, T - len(ids[i]) :] = 1
                gen = self.model.generate(
                    input_ids=x.to(self.device),
                    attention_mask=mask.to(self.device),
                    generation_config=config,
                )
                for b, i in enumerate(rows):
                    cont = gen[b, T:].tolist()
                    cut = next((k for k, t in enumerate(cont) if t in stop), len(cont))
                    out[i] = self.decode(cont[:cut])
        return out

    def split_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lengthwise.eval.lm.split_request with this model's tokenizer; an empty context
        is scored after prefix_id."""
        return split_request(self.encode, context, continuation, self.prefix_id)

    def _vocab_size(self) -> int:
        emb = self.model.get_output_embeddings()
        if emb is not None and hasattr(emb, "weight"):
            return int(emb.weight.shape[0])
        return int(self.model.config.vocab_size)

    def loglikelihood(
        self, requests: list[tuple[str, str]], batch_size: int = 64
    ) -> list[tuple[float, bool]]:
        """For each (context, continuation): sum of log p(continuation tokens | context) and
        whether greedy decoding would produce exactly the continuation (an empty continuation:
        (0.0, True))."""
        pairs = [self.split_request(c, x) for c, x in requests]
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        todo = [i for i, (_, cont) in enumerate(pairs) if cont]
        todo.sort(key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))  # longest first
        vocab = self._vocab_size()
        with torch.inference_mode():
            start = 0
            while start < len(todo):
                T = len(pairs[todo[start]][0]) + len(pairs[todo[start]][1]) - 1  # longest row
                rows_cap = max(1, MAX_LOGIT_ELEMENTS // max(1, T * vocab))
                rows = todo[start : start + min(batch_size, rows_cap)]
                start += len(rows)
                ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), T), dtype=torch.long)
                for b, i in enumerate(rows):
                    s = pairs[i][0] + pairs[i][1]
                    ids[b, : len(s) - 1] = torch.tensor(s[:-1], dtype=torch.long)
                    mask[b, : len(s) - 1] = 1
                logits = self.model(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
                ).logits  # (B, T, V)
                for b, i in enumerate(rows):
                    ctx, cont = pairs[i]
                    first = len(ctx) - 1  # the input position that predicts cont[0]
                    lg = logits[b, first : first + len(cont)].float()  # (n_cont, V)
                    target = torch.tensor(cont, device=lg.device)
                    logp = torch.log_softmax(lg, dim=-1).gather(1, target[:, None])
                    greedy = bool((lg.argmax(dim=-1) == target).all())
                    results[i] = (float(logp.double().sum()), greedy)
        return results

    def token_losses(self, ids: list[int]) -> list[float]:
        """Per-position cross-entropy of a token sequence (len(ids) - 1 values: position i is
        the loss of predicting ids[i + 1]), from one forward without a cache."""
        if len(ids) < 2:
            return []
        with torch.inference_mode():
            x = torch.tensor(ids, dtype=torch.long, device=self.device)
            logits = self.model(input_ids=x[None, :-1], use_cache=False).logits[0].float()
            losses = F.cross_entropy(logits, x[1:], reduction="none")
        return losses.tolist()
