"""Task sources: items become documents whose prompt tokens are never trained on."""

import numpy as np
import pytest
import torch

from lengthwise.batch import IGNORE_INDEX
from lengthwise.cli import main
from lengthwise.config import Config, SourceConfig
from lengthwise.data.sources import iter_documents, noisy_documents, task_source_items
from lengthwise.data.store import TokenStore, prepare
from lengthwise.data.strategies import build_strategy
from lengthwise.data.tokenizer import load_tokenizer


def _config(tmp_path, **source):
    spec = {"kind": "task", "task": "addition", "lengths": [1, 3], "n": 60, "format": "reversed"}
    spec.update(source)
    return Config.model_validate(
        {
            "data": {
                "out_dir": str(tmp_path / "data"),
                "tokenizer": {"kind": "char"},
                "splits": {"train": spec},
            },
            "batching": {"strategy": "best_fit", "tokens_per_step": 256, "max_len": 32},
        }
    )


def test_prepare_records_prompt_lengths(tmp_path):
    cfg = _config(tmp_path)
    prepare(cfg.data, progress=False)
    store = TokenStore(cfg.data.out_dir / "train")
    tok = load_tokenizer(cfg.data.out_dir / "tokenizer.json")
    items = list(task_source_items(cfg.data.splits["train"]))
    assert store.n_docs == len(items) == 60 and store.meta["has_prompts"]
    for i, item in enumerate(items):
        ids = store.doc(i).tolist()
        assert ids[-1] == tok.eos_id
        assert tok.decode(ids) == item.prompt + item.completion
        assert store.prompt_lens[i] == len(tok.encode(item.prompt)) == len(item.prompt)
    store.verify()  # prompt_lens.npy is checksummed with the rest


def test_batches_train_only_on_completions(tmp_path):
    cfg = _config(tmp_path)
    prepare(cfg.data, progress=False)
    store = TokenStore(cfg.data.out_dir / "train")
    tok = load_tokenizer(cfg.data.out_dir / "tokenizer.json")
    items = list(task_source_items(cfg.data.splits["train"]))
    strategy = build_strategy(
        cfg.batching, store.tokens, store.offsets, tok.pad_id, prompt_lens=store.prompt_lens
    )
    trained = 0
    for step in range(strategy.steps_in_epoch(0)):
        batch = strategy.batch(0, step)
        for r in range(batch.input_ids.shape[0]):
            for doc in torch.unique(batch.doc_ids[r]).tolist():
                if doc < 0:
                    continue
                cols = (batch.doc_ids[r] == doc).nonzero().flatten()
                text = tok.decode(batch.input_ids[r, cols].tolist())
                t = batch.targets[r, cols]
                kept = t[t != IGNORE_INDEX].tolist()
                item = next(it for it in items if (it.prompt + it.completion).startswith(text))
                # exactly the completion and EOS are targets (rows hold whole documents here)
                assert tok.decode(kept) == item.completion
                assert kept[-1] == tok.eos_id
                trained += 1
    assert trained >= 40  # best_fit keeps whole steps; the leftover rows wait for epoch 1


def test_several_tasks_interleave_and_share_n():
    src = SourceConfig(kind="task", task=["copy", "reverse"], lengths=[2, 4], n=5)
    items = list(task_source_items(src))
    assert [it.task for it in items] == ["copy", "reverse", "copy", "reverse", "copy"]
    docs = list(iter_documents(src))
    assert [d.prompt_chars for d in docs] == [len(it.prompt) for it in items]
    assert items == list(task_source_items(src))  # deterministic


@pytest.mark.parametrize(
    "source, message",
    [
        ({"task": "no_such_task"}, "task source 'no_such_task'"),
        ({"task": "parity", "format": "reversed"}, "format 'reversed' not available"),
    ],
)
def test_bad_task_source_is_one_line_exit_2(tmp_path, capsys, source, message):
    import yaml

    cfg = _config(tmp_path, **source)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["prepare", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "data" / "train").exists()


def test_loss_eval_skips_prompts(tmp_path):
    """evaluate_loss on a task store scores the same targets as training."""
    from lengthwise.eval.loss import evaluate_loss

    cfg = _config(tmp_path)
    prepare(cfg.data, progress=False)
    store = TokenStore(cfg.data.out_dir / "train")

    vocab = int(store.tokens.max()) + 1

    class Uniform(torch.nn.Module):  # every token equally likely: each scored target costs ln V
        def forward(self, x):
            return torch.zeros(*x.shape, vocab)

    out = evaluate_loss(
        Uniform(),
        store.tokens,
        store.offsets,
        64,
        10**6,
        torch.device("cpu"),
        0,
        prompt_lens=store.prompt_lens,
    )
    expected = int((np.diff(store.offsets) - store.prompt_lens).sum())
    assert out["tokens"] == expected
    assert out["loss"] == pytest.approx(np.log(vocab)) and out["se"] == pytest.approx(0, abs=1e-6)


def test_seen_values_source_and_unseen_eval_set(tmp_path):
    """A training store that never shows the held-out operands, and an eval set made only of
    problems with at least one of them (the `unseen values` OOD set)."""
    from lengthwise.eval.evaluator import task_items
    from lengthwise.tasks import is_heldout

    cfg = Config.model_validate(
        {
            **_config(tmp_path, lengths=[2, 2], n=400, values="seen").model_dump(mode="json"),
            "eval": {
                "sets": [
                    {
                        "name": "unseen",
                        "kind": "task",
                        "task": "addition",
                        "lengths": [2, 2],
                        "format": "reversed",
                        "n": 50,
                        "values": "unseen",
                        "tag": "ood",
                    },
                ]
            },
        }
    )
    prepare(cfg.data, progress=False)
    store = TokenStore(cfg.data.out_dir / "train")
    tok = load_tokenizer(cfg.data.out_dir / "tokenizer.json")
    assert store.n_docs == 400 and store.meta["source"]["values"] == "seen"
    operands = set()
    for i in range(store.n_docs):
        prompt = tok.decode(store.doc(i).tolist())[: store.prompt_lens[i]]
        a, b = prompt.rstrip("=").split("+")
        operands |= {a[::-1], b[::-1]}  # reversed format: least significant digit first
    held = {str(v) for v in range(10, 100) if is_heldout(str(v))}
    assert held and not operands & held and len(operands) > 60
    unseen = task_items(cfg.eval.sets[0], exclude=set())
    assert len(unseen) == 50
    assert all(set(it.terms) & held for it in unseen)


def test_unseen_eval_set_needs_a_seen_training_source(tmp_path):
    base = _config(tmp_path).model_dump(mode="json")
    unseen = {"name": "u", "kind": "task", "task": "addition", "values": "unseen"}
    with pytest.raises(ValueError, match="values 'unseen' needs the train split"):
        Config.model_validate({**base, "eval": {"sets": [unseen]}})
    base["data"]["splits"]["train"].update(values="seen", heldout=0.2)
    with pytest.raises(ValueError, match="heldout: 0.1"):
        Config.model_validate({**base, "eval": {"sets": [unseen]}})
    Config.model_validate({**base, "eval": {"sets": [{**unseen, "heldout": 0.2}]}})


def test_label_noise_changes_exactly_the_last_digit_of_a_fixed_share(tmp_path):
    cfg = _config(tmp_path, n=40, label_noise=0.25, format="coupled")
    src = cfg.data.splits["train"]
    items = list(task_source_items(src))
    docs = list(iter_documents(src))
    pairs = zip(items, docs, strict=True)
    wrong = [i for i, (it, d) in enumerate(pairs) if d.text != it.prompt + it.completion]
    assert len(wrong) == 10 and wrong == sorted(noisy_documents(src))
    for i in wrong:
        right, noisy = items[i].prompt + items[i].completion, docs[i].text
        assert noisy[:-1] == right[:-1] and noisy[-1] != right[-1] and noisy[-1].isdigit()
        assert docs[i].positions == items[i].positions  # a digit stays a digit: same ids
    assert [d.text for d in iter_documents(src)] == [d.text for d in docs]  # deterministic
    # the items (what eval sets and suites regenerate) keep their true answers
    assert items == list(task_source_items(src.model_copy(update={"label_noise": 0.0})))
