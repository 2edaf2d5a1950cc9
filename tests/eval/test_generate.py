"""Greedy generation (batched, left-padded, KV cache) against a naive loop that recomputes the
whole sequence every step, for every position kind; EOS per row; LengthwiseLM against hand
computations from plain forwards.

`python tests/eval/test_generate.py` measures generation speed with the cache against the naive
loop (64 prompts x 40 new tokens, d_model 128, 4 layers)."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from lengthwise.config import ModelConfig
from lengthwise.data.tokenizer import char_tokenizer
from lengthwise.eval.generate import greedy_generate
from lengthwise.eval.lengthwise_lm import LengthwiseLM
from lengthwise.model.gpt import GPT

V = 23
EOS = 22
DIGIT_IDS = list(range(10))  # 0 is a digit and the padding token: abacus must ignore padding

CASES = [
    ("learned", dict(position="learned")),
    ("sinusoidal", dict(position="sinusoidal")),
    ("rope", dict(position="rope", mlp="swiglu")),
    ("nope", dict(position="nope", bias=True)),
    ("alibi", dict(position="alibi")),
    ("fire", dict(position="fire", mlp="swiglu", bias=True)),
    ("relative_bias", dict(position="relative_bias", max_distance=5)),
    ("relative_bias_window", dict(position="relative_bias", max_distance=8, window=3)),
    ("abacus", dict(position="abacus")),
    ("rope_random_positions", dict(position="rope", random_positions_max=64)),
]
IDS = [c[0] for c in CASES]


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def make(vocab_size: int = V, digit_ids: list[int] = DIGIT_IDS, **kw) -> GPT:
    base = dict(
        vocab_size=vocab_size, n_layer=2, n_head=4, d_model=32, max_position=64, init_std=0.2
    )
    if kw.get("position") == "abacus":
        base["digit_token_ids"] = digit_ids
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**base, **kw}))
    with torch.no_grad():  # zero-initialized relative biases would make the tests vacuous
        for name, p in model.named_parameters():
            if "relative" in name:
                p.normal_()
    return model.eval()


def naive_generate(model: GPT, prompt: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """Recompute the full sequence every step, no cache, no padding."""
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([seq]))[0, -1].argmax())
            if nxt == eos_id:
                break
            out.append(nxt)
            seq.append(nxt)
    return out


def prompts(lengths: list[int], seed: int = 0, high: int = EOS) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, high, (n,), generator=g).tolist() for n in lengths]


LENGTHS = [3, 7, 1, 5, 9, 4, 2]


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_batched_equals_alone_equals_naive(name: str, kw: dict):
    model = make(**kw)
    ps = prompts(LENGTHS)
    n = 8
    naive = [naive_generate(model, p, n, EOS) for p in ps]
    batched = greedy_generate(model, ps, n, EOS, batch_size=3, pad_id=0)  # 3 batches, sorted
    alone = [greedy_generate(model, [p], n, EOS)[0] for p in ps]
    assert batched == naive
    assert alone == naive
    assert len({tuple(x) for x in naive}) > 1  # rows differ: argmax is not degenerate


@pytest.mark.parametrize("name", ["rope", "abacus", "relative_bias_window"])
def test_eos_stops_each_row(name: str):
    """EOS chosen among the generated tokens so rows stop at different steps (some at once)."""
    kw = dict(CASES)[name]
    model = make(**kw)
    ps = prompts(LENGTHS, seed=1)
    n = 10
    free = [naive_generate(model, p, n, eos_id=-1) for p in ps]  # never stops
    counts = torch.bincount(torch.tensor([t for row in free for t in set(row)]), minlength=V)
    # a token that some rows produce and others do not
    eos = int(((counts > 0) & (counts < len(ps))).nonzero()[0])
    expected = [row[: row.index(eos)] if eos in row else row for row in free]
    assert len({len(e) for e in expected}) > 1  # rows stop at different steps
    got = greedy_generate(model, ps, n, eos, batch_size=4)
    assert got == expected
    assert got == [naive_generate(model, p, n, eos) for p in ps]


def test_batch_stops_when_every_row_has_stopped():
    """EOS = a token that several free runs produce; those prompts all stop, at different
    steps, and the batch stops with its last row: 1 prefill + (latest stop step) cached steps."""
    model = make(position="rope")
    ps = prompts([3, 7, 1, 5, 9, 4, 2, 6, 8, 3, 5, 2], seed=3)
    n = 30
    free = [naive_generate(model, p, n, eos_id=-1) for p in ps]
    counts = torch.bincount(torch.tensor([t for row in free for t in set(row)]), minlength=V)
    eos = int(counts.argmax())
    early = [i for i, row in enumerate(free) if eos in row[: n // 2]]  # stop before step 15
    stopping = [ps[i] for i in early]
    expected = [free[i][: free[i].index(eos)] for i in early]
    assert len(stopping) >= 3 and len({len(e) for e in expected}) > 1
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    got = greedy_generate(model, stopping, n, eos)
    assert got == expected
    assert len(calls) == 1 + max(len(e) for e in expected)
    # stop_early=False (FSDP2 ranks in lockstep): the same outputs, always 1 + (n - 1) calls
    calls.clear()
    assert greedy_generate(model, stopping, n, eos, stop_early=False) == expected
    assert len(calls) == n


def test_mode_restored_and_edge_cases():
    model = make(position="alibi").train()
    assert greedy_generate(model, [[1, 2]], 0, EOS) == [[]]
    assert greedy_generate(model, [], 5, EOS) == []
    out = greedy_generate(model, [[1, 2, 3]], 4, EOS)
    assert model.training
    assert out == [naive_generate(model.eval(), [1, 2, 3], 4, EOS)]
    with pytest.raises(ValueError, match="empty"):
        greedy_generate(model, [[1], []], 3, EOS)


# --- LengthwiseLM -------------------------------------------------------------------------------

ALPHABET = "0123456789+= abc"


def make_lm(position: str = "rope", **kw) -> LengthwiseLM:
    tok = char_tokenizer(ALPHABET)
    digits = [tok.encode(d)[0] for d in "0123456789"]
    model = make(vocab_size=tok.vocab_size, digit_ids=digits, position=position, **kw)
    return LengthwiseLM(model, tok)


def hand_loglikelihood(lm: LengthwiseLM, context: str, continuation: str) -> tuple[float, bool]:
    """From one plain forward; trailing spaces of the context belong to the continuation, and
    the continuation's tokens are those of encode(context + continuation) after the context's
    (lm-eval-harness)."""
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped) :] + continuation
    ctx = lm.encode(context)
    cont = lm.encode(context + continuation)[len(ctx) :]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(ids)[0].double(), dim=-1)
    total, greedy = 0.0, True
    for j, t in enumerate(cont):
        row = logp[len(ctx) - 1 + j]
        total += float(row[t])
        greedy &= int(row.argmax()) == t
    return total, greedy


def greedy_text(lm: LengthwiseLM, context: str, n: int) -> str | None:
    """The greedy continuation of n tokens, if all are characters (no special tokens)."""
    ids = naive_generate(lm.model, lm.encode(context), n, eos_id=-1)
    text = lm.decode(ids)
    return text if len(text) == n else None


@pytest.mark.parametrize("position", ["rope", "abacus", "learned"])
def test_loglikelihood_equals_hand_computation(position: str):
    lm = make_lm(position)
    contexts = ["12+34=", "ab 3", "7", "c+c=cc", "999+1=", "b", "a1b2", "10+10="]
    found = [(c, t) for c in contexts if (t := greedy_text(lm, c, 3)) is not None]
    assert found, "no context with a 3-character greedy continuation"
    ctx, cont = found[0]
    wrong = cont[:-1] + next(ch for ch in ALPHABET if ch != cont[-1])
    requests = [
        (ctx, cont),  # greedy
        (ctx, wrong),  # last token not the argmax
        ("12+34=", "46"),
        ("a b ", "c"),  # trailing space moves to the continuation
        ("", "12"),  # empty context: EOS
        ("7", ""),  # empty continuation
        ("1+1=", "2 abc 0123"),
    ]
    got = lm.loglikelihood(requests, batch_size=3)
    assert got[0][1] is True and got[1][1] is False
    assert got[5] == (0.0, True)
    assert got[3][0] == pytest.approx(hand_loglikelihood(lm, "a b", " c")[0], abs=1e-4)
    for (c, x), (ll, greedy) in zip(requests, got, strict=True):
        if not x:
            continue
        if not c:
            ids = [lm.eos_id] + lm.encode(x)
            with torch.no_grad():
                logp = torch.log_softmax(lm.model(torch.tensor([ids]))[0].double(), dim=-1)
            want = sum(float(logp[j, ids[j + 1]]) for j in range(len(ids) - 1))
            assert ll == pytest.approx(want, abs=1e-4)
            continue
        want_ll, want_greedy = hand_loglikelihood(lm, c, x)
        assert ll == pytest.approx(want_ll, abs=1e-4)
        assert greedy == want_greedy
        assert ll < 0


@pytest.mark.parametrize("position", ["rope", "alibi", "learned"])
def test_token_losses_equal_cross_entropy(position: str):
    lm = make_lm(position, max_position=32)
    n = 48 if position != "learned" else 32  # beyond max_position where positions allow it
    ids = torch.randint(
        4, lm.tokenizer.vocab_size, (n,), generator=torch.Generator().manual_seed(0)
    )
    got = lm.token_losses(ids.tolist())
    with torch.no_grad():
        want = F.cross_entropy(lm.model(ids[None])[0, :-1], ids[1:], reduction="none")
    assert len(got) == n - 1
    torch.testing.assert_close(torch.tensor(got), want, atol=1e-5, rtol=0)
    assert lm.token_losses(ids[:1].tolist()) == []
    if position == "learned":
        with pytest.raises(ValueError, match="max_position"):
            lm.token_losses(ids.tolist() + [5, 6])  # 33 inputs: position 32


def test_greedy_decodes_generate():
    lm = make_lm("abacus")
    texts = ["12+34=", "a", "", "999999+1="]
    got = lm.greedy(texts, max_new_tokens=6, batch_size=2)
    ids = [lm.encode(t) or [lm.eos_id] for t in texts]
    want = greedy_generate(lm.model, ids, 6, lm.eos_id, pad_id=lm.tokenizer.pad_id)
    assert got == [lm.decode(w) for w in want]
    assert lm.eos_id == lm.tokenizer.eos_id and lm.name == "lengthwise"
    assert lm.decode(lm.encode("1+2=3")) == "1+2=3"
    lm.model.train()  # a live training model: every method leaves its mode alone
    train_lm = LengthwiseLM(lm.model, lm.tokenizer)
    assert train_lm.greedy(texts, 6, batch_size=2) == got
    train_lm.loglikelihood([("1+", "2")])
    train_lm.token_losses([5, 6, 7])
    assert lm.model.training


def test_from_export(tmp_path):
    from lengthwise.eval.exported import write_export

    lm = make_lm("fire")
    tok_path = tmp_path / "tokenizer.json"
    lm.tokenizer.save(tok_path)
    write_export(lm.model, tok_path, tmp_path / "export", source={}, hf=False)
    loaded = LengthwiseLM.from_export(tmp_path / "export")
    ids = lm.encode("12+34=46 abc")
    assert loaded.token_losses(ids) == pytest.approx(lm.token_losses(ids), abs=1e-6)
    assert loaded.greedy(["1+1="], 5) == lm.greedy(["1+1="], 5)
    assert loaded.name == "export"


def benchmark(n_prompts: int = 64, new_tokens: int = 40, threads: int = 2) -> None:
    """Greedy generation with the KV cache against the naive loop (batched, left-padded, the
    whole sequence recomputed every step), same prompts, same outputs."""
    from lengthwise.eval.generate import left_pad

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    V_big = 512
    model = GPT(
        ModelConfig(vocab_size=V_big, n_layer=4, n_head=4, d_model=128, position="rope")
    ).eval()
    g = torch.Generator().manual_seed(0)
    ps = [
        torch.randint(1, V_big, (int(n),), generator=g).tolist()
        for n in torch.randint(8, 33, (n_prompts,), generator=g)
    ]

    def naive() -> list[list[int]]:
        ids, pos, mask = left_pad(ps, 0, torch.device("cpu"))
        out = []
        with torch.inference_mode():
            for _ in range(new_tokens):
                nxt = model(ids, pos, token_mask=mask)[:, -1].argmax(-1, keepdim=True)
                out.append(nxt)
                ids = torch.cat([ids, nxt], 1)
                pos = torch.cat([pos, pos[:, -1:] + 1], 1)
                mask = torch.cat([mask, torch.ones_like(nxt, dtype=torch.bool)], 1)
        return torch.cat(out, 1).tolist()

    def cached() -> list[list[int]]:
        return greedy_generate(model, ps, new_tokens, eos_id=-1, batch_size=64)

    for fn in (naive, cached):  # warm-up
        fn()
    times = {}
    for fn in (naive, cached):
        t0 = time.perf_counter()
        res = fn()
        times[fn.__name__] = time.perf_counter() - t0
    assert res == naive()
    print(
        f"{n_prompts} prompts x {new_tokens} new tokens, d=128, 4 layers, {threads} threads: "
        f"naive {times['naive']:.3f} s, KV cache {times['cached']:.3f} s, "
        f"speedup {times['naive'] / times['cached']:.1f}x"
    )


if __name__ == "__main__":
    benchmark()


# --- task position ids (position coupling) ------------------------------------------------------

POSITIONED = ["learned", "rope", "alibi", "fire", "relative_bias", "relative_bias_window"]


def toy_position(i: int, generated: list[int]) -> int:
    """Any deterministic function of the prompt and the tokens so far: ids that repeat, jump
    back and differ between rows."""
    return (3 * len(generated) + 5 * i + generated[-1]) % 13


def naive_positioned(
    model: GPT, prompt: list[int], pos: list[int], i: int, n: int, eos_id: int, fn=toy_position
) -> list[int]:
    """Recompute the whole sequence every step with its full position ids, no cache."""
    seq, ids, out = list(prompt), list(pos), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([seq]), torch.tensor([ids]))[0, -1].argmax())
            if nxt == eos_id:
                break
            out.append(nxt)
            seq.append(nxt)
            ids.append(fn(i, out))
    return out


@pytest.mark.parametrize("name", POSITIONED)
def test_given_positions_batched_equals_alone_equals_naive(name: str):
    model = make(**dict(CASES)[name])
    ps = prompts(LENGTHS, seed=5)
    g = torch.Generator().manual_seed(1)
    pos = [torch.randint(0, 12, (len(p),), generator=g).tolist() for p in ps]
    n = 8
    naive = [
        naive_positioned(model, p, q, i, n, EOS)
        for i, (p, q) in enumerate(zip(ps, pos, strict=True))
    ]
    batched = greedy_generate(
        model, ps, n, EOS, batch_size=3, prompt_positions=pos, position_fn=toy_position
    )
    alone = [
        greedy_generate(
            model,
            [p],
            n,
            EOS,
            prompt_positions=[q],
            position_fn=lambda _, g, i=i: toy_position(i, g),
        )[0]
        for i, (p, q) in enumerate(zip(ps, pos, strict=True))
    ]
    assert batched == naive
    assert alone == naive
    if name != "fire":  # (FIRE at initialization barely tells ids below 512 apart)
        # the ids matter: positions 0, 1, ... give other tokens
        assert greedy_generate(model, ps, n, EOS, batch_size=3) != naive


def test_given_positions_are_checked():
    model = make(position="rope")
    with pytest.raises(ValueError, match="2 position ids for 3 tokens"):
        greedy_generate(model, [[1, 2, 3]], 2, EOS, prompt_positions=[[0, 1]])
    with pytest.raises(ValueError, match="position lists"):
        greedy_generate(model, [[1, 2, 3]], 2, EOS, prompt_positions=[[0, 1, 2], [0]])


def test_position_fn_sees_each_rows_tokens_once_in_order():
    model = make(position="relative_bias", max_distance=5)
    ps = prompts(LENGTHS, seed=2)
    calls: dict[int, list[list[int]]] = {}

    def record(i: int, generated: list[int]) -> int:
        calls.setdefault(i, []).append(list(generated))
        return len(generated)

    out = greedy_generate(model, ps, 6, EOS, batch_size=4, position_fn=record)
    for i, row in enumerate(out):
        # one call per fed token: every generated token but the last (never fed back) ...
        fed = row if len(row) < 6 else row[:-1]
        assert calls.get(i, []) == [fed[: k + 1] for k in range(len(fed))]


def coupled_items(n: int = 12):
    from lengthwise.tasks import generate_items, get_task

    task = get_task("addition")
    return task, list(generate_items(task, (1, 6), n, "coupled", seed=4))


def test_greedy_with_positions_uses_the_task_ids():
    """LengthwiseLM.greedy_with_positions == a naive loop whose ids come from the task's rule
    applied to the text so far (special tokens read as non-digits)."""
    lm = make_lm("relative_bias", max_distance=8, window=3)
    task, items = coupled_items()
    ps = [it.prompt for it in items]
    n = 8
    got = lm.greedy_with_positions(ps, task.positions_for, n, batch_size=5)

    def char(t: int) -> str:
        c = lm.decode([t])
        return c if len(c) == 1 else "\0"

    want = []
    for i, p in enumerate(ps):
        fn = lambda _, gen, p=p: task.positions_for(p, "".join(char(t) for t in gen))[-1]  # noqa: E731
        ids = naive_positioned(
            lm.model, lm.encode(p), task.positions_for(p, ""), i, n, lm.eos_id, fn
        )
        want.append(lm.decode(ids))
    assert got == want
    assert got != lm.greedy(ps, n, batch_size=5)  # coupled ids change what the model writes
    assert any(sum(c.isdigit() for c in g) >= 2 for g in got)  # digit runs got ids 1, 2, ...
    with pytest.raises(ValueError, match="one token per character"):
        lm.greedy_with_positions(["12+3="], lambda p, c: [0] * (len(p) + len(c) - 1), 3)


def test_score_items_decodes_coupled_items_with_their_positions():
    from lengthwise.eval.accuracy import score_items

    lm = make_lm("relative_bias", max_distance=8, window=3)
    task, items = coupled_items()
    calls = []

    class Spy(LengthwiseLM):
        def greedy(self, *args, **kw):
            calls.append("greedy")
            return super().greedy(*args, **kw)

        def greedy_with_positions(self, *args, **kw):
            calls.append("positions")
            return super().greedy_with_positions(*args, **kw)

    spy = Spy(lm.model, lm.tokenizer)
    score = score_items(spy, task, items, batch_size=5)
    budget = max(len(it.completion) for it in items) + 1
    assert calls == ["positions"]
    assert score.outputs == lm.greedy_with_positions(
        [it.prompt for it in items], task.positions_for, budget, batch_size=5
    )
    calls.clear()
    rev = [task.render(tuple(int(t) for t in it.terms), "reversed") for it in items]
    assert score_items(spy, task, rev, batch_size=5).total == len(items)
    assert calls == ["greedy"]  # no positions, plain decoding

    class Plain:  # an EvalLM without greedy_with_positions (e.g. a Hugging Face model)
        name, eos_id = "plain", lm.eos_id
        encode, decode = lm.encode, lm.decode

        def greedy(self, prompts, max_new_tokens, batch_size=64):
            return lm.greedy(prompts, max_new_tokens, batch_size=batch_size)

    plain = score_items(Plain(), task, items, batch_size=5)
    assert plain.outputs == lm.greedy([it.prompt for it in items], budget, batch_size=5)
