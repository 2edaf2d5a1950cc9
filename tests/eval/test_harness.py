"""The lm-eval-harness adapter: its three request types on hand-built `Instance`s over a stub
EvalLM with hand-checkable answers and over a tiny HF Llama (tests/eval/test_hf.py), the missing
lm_eval error, and `lm_eval.simple_evaluate` end to end on three local tasks (multiple choice,
generation, rolling perplexity) defined by YAML files and a JSONL file in tmp_path: no network."""

from __future__ import annotations

import importlib
import json
import logging
import math
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from lengthwise.errors import UserError  # noqa: E402
from lengthwise.eval.harness import LengthwiseHarnessLM, cut_at_stop, stop_strings  # noqa: E402


class StubLM:
    """A pure-Python EvalLM: one token per character (its code point).
    - greedy: "4.\\n junk" repeated, cut to max_new_tokens characters;
    - loglikelihood: -(sum of the continuation's code points) / 100 - len(context) / 1000,
      greedy iff the stripped continuation repeats the context's last character;
    - token_losses: the target's code point / 100 (so a text's total depends only on every
      token being predicted exactly once)."""

    name = "stub"
    eos_id = 0

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))

    def greedy(self, prompts: list[str], max_new_tokens: int, batch_size: int = 64) -> list[str]:
        self.calls.append(("greedy", list(prompts), max_new_tokens, batch_size))
        return [("4.\n junk" * 100)[:max_new_tokens] for _ in prompts]

    def loglikelihood(
        self, requests: list[tuple[str, str]], batch_size: int = 64
    ) -> list[tuple[float, bool]]:
        self.calls.append(("loglikelihood", list(requests), batch_size))
        return [(-sum(map(ord, x)) / 100 - len(c) / 1000, x.strip() == c[-1:]) for c, x in requests]

    def token_losses(self, ids: list[int]) -> list[float]:
        self.calls.append(("token_losses", list(ids)))
        return [t / 100 for t in ids[1:]]


def inst(request_type: str, *args, idx: int = 0) -> Instance:
    return Instance(request_type=request_type, doc={}, arguments=tuple(args), idx=idx)


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def test_loglikelihood_passes_pairs_through() -> None:
    stub = StubLM()
    h = LengthwiseHarnessLM(stub, batch_size=7)
    reqs = [inst("loglikelihood", "ab", " b"), inst("loglikelihood", "", "xy", idx=1)]
    assert h.loglikelihood(reqs) == [
        (-(32 + 98) / 100 - 2 / 1000, True),
        (-(120 + 121) / 100, False),
    ]
    assert stub.calls == [("loglikelihood", [("ab", " b"), ("", "xy")], 7)]


def test_loglikelihood_rolling_whole_text_and_windows() -> None:
    texts = ["hello world", "", "a b c d e f g h i j k l m n o p"]
    want = [-sum(map(ord, t)) / 100 for t in texts]
    reqs = [inst("loglikelihood_rolling", t, idx=i) for i, t in enumerate(texts)]

    stub = StubLM()
    got = LengthwiseHarnessLM(stub, batch_size=5).loglikelihood_rolling(reqs)
    assert got == pytest.approx(want)
    assert stub.calls == [("loglikelihood", [("", t) for t in texts], 5)]  # one batched call

    for max_length in (1, 4, 100):  # windows of max_length inputs, each token predicted once
        stub = StubLM()
        got = LengthwiseHarnessLM(stub, max_length=max_length).loglikelihood_rolling(reqs)
        assert got == pytest.approx(want)
        windows = [c[1] for c in stub.calls]
        assert all(c[0] == "token_losses" for c in stub.calls)
        assert all(len(w) <= max_length + 1 for w in windows)
        assert windows[0][0] == stub.eos_id  # the first window starts from the prefix token
        n_long = len(texts[2])
        assert len(windows) == math.ceil(len(texts[0]) / max_length) + math.ceil(
            n_long / max_length
        )


def test_generate_until_stop_strings_and_budgets(caplog) -> None:
    stub = StubLM()
    h = LengthwiseHarnessLM(stub, batch_size=3, max_gen_toks=9)
    reqs = [
        inst("generate_until", "p0", {"until": ["\n", "."], "max_gen_toks": 20}),
        inst("generate_until", "p1", {"until": "\n", "max_gen_toks": 20}),
        inst("generate_until", "p2", {"until": ["zzz", ""]}),  # default budget, no stop hit
        inst("generate_until", "p3", {"until": [" junk", "\n"], "max_new_tokens": 20}),
        inst("generate_until", "p4", {"max_gen_toks": 2, "do_sample": True, "temperature": 1}),
    ]
    with caplog.at_level(logging.WARNING, logger="lengthwise.eval.harness"):
        out = h.generate_until(reqs)
    assert out == ["4", "4.", "4.\n junk4", "4.", "4."]
    assert "sampling settings ignored" in caplog.text
    # one greedy call per budget, prompts in request order, the adapter's batch size
    assert sorted(stub.calls, key=lambda c: c[2]) == [
        ("greedy", ["p4"], 2, 3),
        ("greedy", ["p2"], 9, 3),
        ("greedy", ["p0", "p1", "p3"], 20, 3),
    ]


def test_stop_helpers() -> None:
    assert stop_strings(None) == [] and stop_strings("x") == ["x"]
    assert stop_strings(["a", "", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="until"):
        stop_strings(3)
    assert cut_at_stop("abc.def\nghi", ["\n", "."]) == "abc"  # earliest, not first listed
    assert cut_at_stop("abc", []) == "abc" and cut_at_stop("abc", ["a"]) == ""


def test_bad_arguments() -> None:
    with pytest.raises(UserError, match="batch_size"):
        LengthwiseHarnessLM(StubLM(), batch_size=0)
    with pytest.raises(UserError, match="max_length"):
        LengthwiseHarnessLM(StubLM(), max_length=0)


def test_missing_lm_eval_is_a_clear_error(monkeypatch) -> None:
    for mod in [m for m in list(sys.modules) if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.delitem(sys.modules, "lengthwise.eval.harness")
    with pytest.raises(UserError, match=r"pip install 'lengthwise\[harness\]'") as info:
        importlib.import_module("lengthwise.eval.harness")
    assert isinstance(info.value, ImportError)  # pytest.importorskip and `except ImportError`


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from .test_hf import build_model_folder

    return build_model_folder(tmp_path_factory.mktemp("harness_hf") / "tiny")


def test_adapter_over_hf_model(hf_folder: Path) -> None:
    h = LengthwiseHarnessLM.from_path(hf_folder, batch_size=4)
    lm = h.lm
    assert h.name == hf_folder.name and h.prefix_id == lm.prefix_id == 1

    pairs = [("abc", " 12"), ("", "abc"), ("j", "=")]
    assert h.loglikelihood([inst("loglikelihood", *p) for p in pairs]) == lm.loglikelihood(pairs)

    texts = ["0123456789 abc", "a", "j=j=j=j=j=j=j=j=j=j=j=j"]
    reqs = [inst("loglikelihood_rolling", t) for t in texts]
    want = [-sum(lm.token_losses([lm.prefix_id, *lm.encode(t)])) for t in texts]
    assert h.loglikelihood_rolling(reqs) == pytest.approx(want, abs=1e-4)
    whole = LengthwiseHarnessLM(lm, max_length=64).loglikelihood_rolling(reqs)
    assert whole == pytest.approx(want, abs=1e-4)  # one window when the text fits
    short = LengthwiseHarnessLM(lm, max_length=5).loglikelihood_rolling(reqs)
    assert short[1] == pytest.approx(want[1], abs=1e-4)  # "a" fits in one window
    ids = lm.encode(texts[0])  # 14 tokens, windows of 5 inputs: [BOS]+ids[:4], then 5 + 5
    by_hand = -sum(lm.token_losses([1, *ids[:5]]))
    by_hand -= sum(lm.token_losses(ids[4:10])[-5:]) + sum(lm.token_losses(ids[8:14])[-4:])
    assert short[0] == pytest.approx(by_hand, abs=1e-4)

    gen = [inst("generate_until", "abc 12+", {"until": ["\n"], "max_gen_toks": 10})]
    full = lm.greedy(["abc 12+"], 10)[0]
    assert h.generate_until(gen) == [full.split("\n")[0]]


DOCS = [
    {"question": "1+1=", "choices": ["2", "33"], "label": 0, "answer": "2", "text": "one two"},
    {"question": "2+2=", "choices": ["44", "4"], "label": 1, "answer": "4", "text": "three"},
    {"question": "3+3=", "choices": ["6", "66"], "label": 1, "answer": "6", "text": "a b c d"},
]


def write_tasks(root: Path) -> Path:
    """Three lm-eval tasks over one local JSONL file (the `json` dataset builder, cache in
    tmp_path)."""
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(root / "cache")},
        "test_split": "test",
    }
    tasks = {
        "lw_mc": {
            "output_type": "multiple_choice",
            "doc_to_text": "{{question}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{label}}",
            "metric_list": [{"metric": "acc"}],
        },
        "lw_gen": {
            "output_type": "generate_until",
            "doc_to_text": "{{question}}",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["\n", "."], "max_gen_toks": 6, "do_sample": False},
            "metric_list": [{"metric": "exact_match"}],
        },
        "lw_ppl": {
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}],
        },
    }
    folder = root / "tasks"
    folder.mkdir()
    for name, cfg in tasks.items():  # JSON is valid YAML
        (folder / f"{name}.yaml").write_text(json.dumps({"task": name, **common, **cfg}))
    return folder


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    from lm_eval.tasks import TaskManager

    folder = write_tasks(tmp_path_factory.mktemp("lm_eval_tasks"))
    return TaskManager(include_path=str(folder), include_defaults=False)


def evaluate(h: LengthwiseHarnessLM, task_manager) -> dict:
    out = lm_eval.simple_evaluate(
        model=h,
        tasks=["lw_mc", "lw_gen", "lw_ppl"],
        task_manager=task_manager,
        bootstrap_iters=0,
        log_samples=False,
    )
    return out["results"]


def test_simple_evaluate_stub(task_manager) -> None:
    res = evaluate(LengthwiseHarnessLM(StubLM()), task_manager)
    # mc: the stub prefers the continuation with the smaller code-point sum, i.e. the shorter
    # choice: right on docs 0 and 1, wrong on doc 2
    assert res["lw_mc"]["acc,none"] == pytest.approx(2 / 3)
    # generation: "4.\n junk" cut at "." is "4": right on doc 1 only
    assert res["lw_gen"]["exact_match,none"] == pytest.approx(1 / 3)
    ll = sum(-sum(map(ord, d["text"])) / 100 for d in DOCS)
    words = sum(len(d["text"].split()) for d in DOCS)
    n_bytes = sum(len(d["text"].encode()) for d in DOCS)
    assert res["lw_ppl"]["word_perplexity,none"] == pytest.approx(math.exp(-ll / words))
    assert res["lw_ppl"]["byte_perplexity,none"] == pytest.approx(math.exp(-ll / n_bytes))


def test_simple_evaluate_hf(task_manager, hf_folder: Path) -> None:
    h = LengthwiseHarnessLM.from_path(hf_folder, batch_size=4)
    res = evaluate(h, task_manager)
    assert 0 <= res["lw_mc"]["acc,none"] <= 1
    assert 0 <= res["lw_gen"]["exact_match,none"] <= 1
    # a random model over ~27 tokens: perplexity per byte (= per token here) near the vocab size
    assert 5 < res["lw_ppl"]["byte_perplexity,none"] < 200
