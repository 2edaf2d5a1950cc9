"""Coupled task stores: positions.bin (a task position id per token), and batches and held-out
loss that use those ids (plus a seeded per-row offset in training batches)."""

import numpy as np
import pytest
import torch

from lengthwise.config import Config
from lengthwise.data.sources import task_source_items
from lengthwise.data.store import TokenStore, prepare
from lengthwise.data.strategies import build_strategy
from lengthwise.data.tokenizer import load_tokenizer, train_bpe
from lengthwise.errors import UserError
from lengthwise.tasks.registry import coupled_ids

BATCHING = {
    "pad": {"strategy": "pad", "tokens_per_step": 256, "max_len": 32},
    "concat_chunk": {"strategy": "concat_chunk", "tokens_per_step": 256, "max_len": 32},
    "concat_chunk_docmask": {
        "strategy": "concat_chunk_docmask",
        "tokens_per_step": 256,
        "max_len": 32,
    },
    "best_fit": {"strategy": "best_fit", "tokens_per_step": 256, "max_len": 32},
    "decomposition": {
        "strategy": "decomposition",
        "tokens_per_step": 128,
        "max_len": 16,
        "min_bucket": 4,
    },
}


def _config(tmp_path, batching="best_fit", tokenizer=None, **source):
    spec = {"kind": "task", "task": "addition", "lengths": [1, 4], "n": 200, "format": "coupled"}
    spec.update(source)
    return Config.model_validate(
        {
            "data": {
                "out_dir": str(tmp_path / "data"),
                "tokenizer": tokenizer or {"kind": "char"},
                "splits": {"train": spec},
            },
            "batching": BATCHING[batching] if isinstance(batching, str) else batching,
        }
    )


@pytest.fixture(scope="module")
def coupled(tmp_path_factory):
    """(config, store, tokenizer, items) of one coupled store, shared by the batch tests."""
    tmp = tmp_path_factory.mktemp("coupled")
    cfg = _config(tmp)
    prepare(cfg.data, progress=False)
    store = TokenStore(cfg.data.out_dir / "train")
    tok = load_tokenizer(cfg.data.out_dir / "tokenizer.json")
    return cfg, store, tok, list(task_source_items(cfg.data.splits["train"]))


def test_positions_bin_is_the_items_positions(coupled):
    _, store, tok, items = coupled
    assert store.meta["has_positions"] and store.positions is not None
    assert store.positions.dtype == np.int32 and len(store.positions) == store.n_tokens
    assert np.array_equal(store.positions, np.concatenate([it.positions for it in items]))
    for i, item in enumerate(items[:20]):  # document i's ids, token by token
        lo, hi = store.offsets[i], store.offsets[i + 1]
        assert tok.decode(store.doc(i).tolist()) == item.prompt + item.completion
        assert store.positions[lo:hi].tolist() == [*coupled_ids(item.prompt + item.completion), 0]
    assert "positions.bin" in store.meta["sha256"]
    store.verify()


def test_positions_bin_is_checksummed(tmp_path):
    cfg = _config(tmp_path, n=20)
    prepare(cfg.data, progress=False)
    path = cfg.data.out_dir / "train" / "positions.bin"
    data = bytearray(path.read_bytes())
    data[4] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="positions.bin: checksum mismatch"):
        TokenStore(cfg.data.out_dir / "train").verify()
    path.write_bytes(bytes(data[:-4]))
    with pytest.raises(UserError, match="positions.bin: missing or truncated"):
        TokenStore(cfg.data.out_dir / "train")


def test_other_formats_write_no_positions(tmp_path):
    cfg = _config(tmp_path, n=20, format="reversed")
    prepare(cfg.data, progress=False)
    store = TokenStore(cfg.data.out_dir / "train")
    assert store.positions is None and not store.meta["has_positions"]
    assert not (cfg.data.out_dir / "train" / "positions.bin").exists()
    assert "positions.bin" not in store.meta["sha256"]


def test_bos_gets_id_zero(tmp_path):
    cfg = _config(tmp_path, n=10, tokenizer={"kind": "char", "bos": True})
    prepare(cfg.data, progress=False)
    store = TokenStore(cfg.data.out_dir / "train")
    items = list(task_source_items(cfg.data.splits["train"]))
    for i, item in enumerate(items):
        lo, hi = store.offsets[i], store.offsets[i + 1]
        assert store.positions[lo:hi].tolist() == [0, *item.positions]
        assert store.prompt_lens[i] == 1 + len(item.prompt)


def test_bpe_tokenizer_is_refused_before_anything_is_written(tmp_path):
    cfg = _config(tmp_path, n=10, tokenizer={"kind": "bpe", "vocab_size": 300})
    with pytest.raises(UserError, match="character tokenizer") as e:
        prepare(cfg.data, progress=False)
    assert len(str(e.value).splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_a_tokenizer_file_that_is_not_per_character_is_refused(tmp_path):
    texts = [
        it.prompt + it.completion
        for it in task_source_items(_config(tmp_path).data.splits["train"])
    ]
    bpe = train_bpe(texts * 5, vocab_size=300)  # merges frequent digit pairs
    bpe.save(tmp_path / "bpe.json")
    cfg = _config(tmp_path, tokenizer={"kind": "file", "path": str(tmp_path / "bpe.json")})
    with pytest.raises(UserError, match="needs a character tokenizer") as e:
        prepare(cfg.data, progress=False)
    assert len(str(e.value).splitlines()) == 1
    leftovers = list((tmp_path / "data").iterdir()) if (tmp_path / "data").exists() else []
    assert leftovers == []  # the half-built store was removed


def _expected_ids(store: TokenStore, tok, doc: int, start: int, n: int) -> list[int]:
    """The coupled ids of tokens start..start+n of a document, from its decoded text."""
    text = tok.decode(store.doc(doc).tolist())
    return [*coupled_ids(text), 0][start : start + n]


@pytest.mark.parametrize("name", list(BATCHING))
def test_batch_positions_are_the_stored_ids(coupled, name):
    cfg, store, tok, _ = coupled
    batching = type(cfg.batching).model_validate(BATCHING[name])
    s = build_strategy(
        batching,
        store.tokens,
        store.offsets,
        tok.pad_id,
        prompt_lens=store.prompt_lens,
        positions=store.positions,
    )
    plain = build_strategy(
        batching, store.tokens, store.offsets, tok.pad_id, prompt_lens=store.prompt_lens
    )
    checked = 0
    for step in range(min(3, s.steps_in_epoch(0))):
        plan, batch = s.plan(0, step), s.batch(0, step)
        other = plain.batch(0, step)  # same tokens and targets, positions counted from 0
        assert torch.equal(batch.input_ids, other.input_ids)
        assert torch.equal(batch.targets, other.targets)
        T = plan.seq_len
        real = torch.zeros_like(batch.input_ids, dtype=torch.bool)
        for row, col, src, length, doc in zip(
            plan.row, plan.col, plan.src, plan.length, plan.doc, strict=True
        ):
            n = int(min(length, T - col))
            start = int(src - store.offsets[doc])
            got = batch.position_ids[row, col : col + n].tolist()
            assert got == _expected_ids(store, tok, int(doc), start, n)
            real[row, col : col + n] = True
            checked += n
        assert (batch.position_ids[~real] == 0).all()  # padding
    assert checked > 100


def test_training_offsets_shift_whole_rows(coupled):
    cfg, store, tok, _ = coupled
    shifted = cfg.batching.model_copy(update={"position_offset_max": 7})

    def strategy(batching, rank=0, world_size=1, positions=store.positions):
        return build_strategy(
            batching,
            store.tokens,
            store.offsets,
            tok.pad_id,
            rank=rank,
            world_size=world_size,
            prompt_lens=store.prompt_lens,
            positions=positions,
        )

    base, s = strategy(cfg.batching), strategy(shifted)
    seen = set()
    for step in range(s.steps_in_epoch(0)):
        b, ref = s.batch(0, step), base.batch(0, step)
        real = b.doc_ids >= 0
        diff = b.position_ids - ref.position_ids
        assert (diff[~real] == 0).all()
        for r in range(diff.shape[0]):
            offsets = diff[r][real[r]].unique().tolist()
            assert len(offsets) == 1 and 0 <= offsets[0] <= 7  # one offset per row
            seen.add(offsets[0])
        # deterministic from (seed, epoch, step): a fresh strategy (a resumed run) agrees
        assert torch.equal(strategy(shifted).batch(0, step).position_ids, b.position_ids)
        # two ranks hold the single-process rows, with their offsets
        halves = [strategy(shifted, r, 2).batch(0, step).position_ids for r in (0, 1)]
        assert torch.equal(torch.cat(halves), b.position_ids)
    assert len(seen) > 4
    assert not torch.equal(s.batch(1, 0).position_ids, strategy(shifted).batch(0, 0).position_ids)
    # no stored positions: the offset setting changes nothing
    plain, plain_shifted = strategy(cfg.batching, positions=None), strategy(shifted, positions=None)
    assert torch.equal(plain.batch(0, 0).position_ids, plain_shifted.batch(0, 0).position_ids)


def test_positions_must_match_the_tokens(coupled):
    cfg, store, tok, _ = coupled
    with pytest.raises(ValueError, match="position ids for"):
        build_strategy(
            cfg.batching, store.tokens, store.offsets, tok.pad_id, positions=store.positions[:-1]
        )


def test_loss_eval_uses_the_stored_ids(coupled):
    from lengthwise.eval.loss import evaluate_loss

    _, store, _, _ = coupled
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    vocab = int(store.tokens.max()) + 1

    class Record(torch.nn.Module):
        def forward(self, x, position_ids=None):
            seen.append((x, position_ids))
            return torch.zeros(*x.shape, vocab)  # logits

    pad = 1  # the char tokenizer's pad id; never inside a document
    args = (store.tokens, store.offsets, 16, 10**6, torch.device("cpu"), pad)
    evaluate_loss(Record(), *args, prompt_lens=store.prompt_lens, positions=store.positions)
    # every row is one whole document (at most 16 tokens): its ids must be the stored ones
    stored: dict[tuple, set] = {}
    for i in range(store.n_docs):
        lo, hi = store.offsets[i], store.offsets[i + 1]
        stored.setdefault(tuple(store.doc(i).tolist()), set()).add(
            tuple(store.positions[lo:hi].tolist())
        )
    rows = 0
    for x, pos in seen:
        for r in range(x.shape[0]):
            n = int((x[r] != pad).sum())
            assert (x[r, n:] == pad).all() and (pos[r, n:] == 0).all()
            assert tuple(pos[r, :n].tolist()) in stored[tuple(x[r, :n].tolist())]
            rows += 1
    assert rows == store.n_docs
    seen.clear()
    evaluate_loss(Record(), *args, prompt_lens=store.prompt_lens)
    assert all(pos is None for _, pos in seen)  # unchanged call without positions
