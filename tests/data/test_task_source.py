"""Task sources: items become documents whose prompt tokens are never trained on."""

import numpy as np
import pytest
import torch

from lengthwise.batch import IGNORE_INDEX
from lengthwise.cli import main
from lengthwise.config import Config, SourceConfig
from lengthwise.data.sources import iter_documents, task_source_items
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

    class Count(torch.nn.Module):  # "loss" = number of scored targets
        def forward(self, x, targets):
            return (targets != IGNORE_INDEX).sum().double()

    out = evaluate_loss(
        Count(),
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
