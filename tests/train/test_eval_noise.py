"""The eval sets' standard errors, from the evaluator to the alert records: Evaluator.noise on a
tiny model (answers fixed by an oracle, so the accuracies are known), and the trainer's eval
round turning them into z, significance, counts and console lines."""

import json
import math

import pytest
import torch

from lengthwise.train.evaluation import EvalRound
from lengthwise.train.trainer import Counters

COPY = {"kind": "task", "task": "copy", "lengths": [2, 4], "tag": "ood"}
SETS = [
    {"name": "val", "split": "val", "tag": "ood"},
    {"name": "a", "n": 7, "seed": 1, **COPY},
    {"name": "b", "n": 12, "seed": 2, **COPY},
]


class _Half:
    """An EvalLM that answers items 0, 2, 4, ... (by position in a call) right, the rest wrong."""

    def __init__(self, items):
        self.answers = {it.prompt: it.completion for it in items}

    def greedy(self, prompts, max_new_tokens, batch_size=64):
        return [self.answers[p] if i % 2 == 0 else "#" for i, p in enumerate(prompts)]


def test_evaluator_noise_per_metric(make_cfg, monkeypatch):
    import lengthwise.eval.evaluator as ev
    from lengthwise.data.store import TokenStore
    from lengthwise.data.tokenizer import load_tokenizer
    from lengthwise.eval.accuracy import score_items
    from lengthwise.eval.loss import evaluate_loss
    from lengthwise.train.trainer import Trainer

    cfg = make_cfg("eval.sets=" + json.dumps(SETS))
    model = Trainer(cfg, quiet=True).model_plain
    monkeypatch.setattr(
        ev,
        "score_items",
        lambda lm, task, items, budget, bs, stop=None: score_items(
            _Half(items), task, items, budget
        ),
    )
    tok = load_tokenizer(cfg.data.out_dir / "tokenizer.json")
    evaluator = ev.Evaluator(cfg, tok, torch.device("cpu"))
    assert evaluator.noise == {}
    metrics = evaluator.run(model)
    noise = evaluator.noise
    assert list(metrics) == cfg.eval.metric_names()  # the SEs are not metrics
    assert (metrics["a/acc"], metrics["b/acc"]) == (4 / 7, 6 / 12)
    assert noise["a/acc"] == pytest.approx(math.sqrt(4 / 7 * 3 / 7 / 7))
    assert noise["b/acc"] == pytest.approx(math.sqrt(0.25 / 12))
    assert noise["a/parse_rate"] == pytest.approx(
        math.sqrt(metrics["a/parse_rate"] * (1 - metrics["a/parse_rate"]) / 7)
    )
    assert noise["ood_mean/acc"] == pytest.approx(
        math.sqrt(noise["a/acc"] ** 2 + noise["b/acc"] ** 2) / 2
    )
    store = TokenStore(cfg.data.out_dir / "val")
    direct = evaluate_loss(
        model, store.tokens, store.offsets, cfg.batching.max_len, SETS[0].get("tokens", 10**6),
        torch.device("cpu"), tok.pad_id, prompt_lens=store.prompt_lens,
    )  # fmt: skip
    assert metrics["val/loss"] == direct["loss"] and noise["val/loss"] == direct["se"] > 0
    assert noise["ood_mean/loss"] == noise["val/loss"]  # the mean of one set
    assert noise["val/ppl"] == pytest.approx(metrics["val/ppl"] * direct["se"])
    assert set(noise) == set(metrics)


class _Noisy:
    """An evaluator of scripted (metrics, noise) pairs."""

    ood_metrics = ["ood/acc"]

    def __init__(self, evals):
        self.evals, self.noise = iter(evals), {}

    def run(self, model):
        metrics, self.noise = next(self.evals)
        return metrics


class _Log:
    def __init__(self):
        self.records, self.lines = [], []

    def write(self, event, tokens, step, **fields):
        self.records.append({"event": event, "tokens": tokens, "step": step, **fields})

    def message(self, text):
        self.lines.append(text)


def _se(p, n=100):
    return math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("only_significant", [False, True])
def test_eval_round_logs_z_and_counts_significant_alerts(make_cfg, only_significant):
    cfg = make_cfg(
        "eval.sets=[{name: ood, kind: task, task: copy, lengths: [2, 2], n: 100, tag: ood}]",
        f"monitor.alert_only_significant={str(only_significant).lower()}",
        "monitor.min_best=0.1",
    )
    evals = [
        (0.053, _se(0.053)),
        (0.0, 0.0),  # a "100% drop" from a best under min_best: no alert
        (0.8, _se(0.8)),
        (0.74, _se(0.74)),  # z = 1.01: within noise
        (0.6, _se(0.6)),  # z = 3.16: significant
        (0.7, None),  # no SE: unknown
    ]
    rnd = EvalRound(cfg, _Noisy([({"ood/acc": v}, {} if se is None else {"ood/acc": se})
                                 for v, se in evals]), is_main=True)  # fmt: skip
    log, c = _Log(), Counters()
    for i in range(len(evals)):
        c.step, c.tokens = i + 1, 100 * (i + 1)
        rnd.run(None, c, log)
    alerts = [r for r in log.records if r["event"] == "alert"]
    got = [(a["step"], a["significant"]) for a in alerts]
    if only_significant:
        assert got == [(5, True), (6, None)]
    else:
        assert got == [(4, False), (5, True), (6, None)]
        assert alerts[0]["z"] == pytest.approx(0.06 / math.sqrt(_se(0.8) ** 2 + _se(0.74) ** 2))
        assert alerts[0]["se"] == pytest.approx(math.sqrt(_se(0.8) ** 2 + _se(0.74) ** 2))
        assert log.lines[0].endswith("(step 3; z=1.01, within noise)")
    assert log.lines[-2].endswith("(step 3; z=3.16, significant)")
    assert log.lines[-1].endswith("(step 3; noise unknown)")
    assert (c.alerts, c.alerts_significant, c.alerts_within_noise) == (
        len(alerts),
        1,
        0 if only_significant else 1,
    )
    eval_records = [r for r in log.records if r["event"] == "eval"]
    assert eval_records[0]["se"] == {"ood/acc": _se(0.053)} and "se" not in eval_records[-1]
    # the best's SE is in the state a checkpoint keeps
    assert rnd.state_dict()["monitor"]["metrics"]["ood/acc"]["best_se"] == _se(0.8)


def test_counters_of_an_old_checkpoint_load():
    old = {"step": 5, "tokens": 50, "alerts": 3, "best": 0.5}
    c = Counters(**old)
    assert (c.alerts, c.alerts_significant, c.alerts_within_noise) == (3, 0, 0)
