"""`model.kind: hf` (model/hf.py) on CPU, a tiny Llama (grouped-query attention) and a tiny
GPT-2: every batching strategy that keeps documents apart feeds it rows whose per-document
logits equal each document run alone, with each attention implementation; dropout maps onto
the architecture's fields or is refused; AdamW groups; greedy KV-cache generation equals a
naive loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lengthwise.config import BatchingConfig, ModelConfig
from lengthwise.data.strategies import build_strategy
from lengthwise.errors import UserError
from lengthwise.eval.generate import greedy_generate
from lengthwise.model.build import make_model
from lengthwise.model.hf import HFModel, build_hf_model

transformers = pytest.importorskip("transformers", reason="model.kind: hf needs transformers")

VOCAB, PAD, EOS = 48, 0, 2
ARCHS = {  # Llama with 2 key/value heads for 4 query heads: grouped-query attention
    "llama": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=64),
}  # fmt: skip
IMPLS = ("lengthwise", "sdpa", "eager")
KEEP_APART = ("pad", "concat_chunk_docmask", "best_fit", "decomposition")  # all but concat_chunk


def hf_model(arch: str, attention: str = "lengthwise", **fields) -> HFModel:
    """A fresh model, the same weights for the same arch whatever the attention."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        kind="hf", vocab_size=VOCAB, hf={"config": ARCHS[arch], "attention": attention}, **fields
    )
    model = make_model(cfg)
    assert isinstance(model, HFModel)
    return model.eval()


def tiny_store() -> tuple[np.ndarray, np.ndarray]:
    """60 documents of 2..40 tokens (ids 3.., EOS last): many longer than max_len 16."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 41, 60)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    tokens = rng.integers(3, VOCAB, offsets[-1])
    tokens[offsets[1:] - 1] = EOS
    return tokens.astype(np.uint16), offsets


TOKENS, OFFSETS = tiny_store()


def first_batch(strategy: str):
    cfg = BatchingConfig(strategy=strategy, tokens_per_step=96, max_len=16, min_bucket=4, seed=1)
    return build_strategy(cfg, TOKENS, OFFSETS, PAD).batch(0, 0)


def documents(batch) -> list[tuple[int, int, int]]:
    """(row, start, end) of every document (padding left out)."""
    docs = []
    for b in range(batch.shape[0]):
        if batch.doc_ids is None:
            docs.append((b, 0, int((batch.input_ids[b] != PAD).sum())))  # padding at the end
            continue
        row = batch.doc_ids[b].tolist()
        starts = [t for t in range(len(row)) if t == 0 or row[t] != row[t - 1]]
        for s, e in zip(starts, starts[1:] + [len(row)], strict=True):
            if row[s] >= 0:
                docs.append((b, s, e))
    return docs


@pytest.mark.parametrize("attention", IMPLS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_packed_rows_give_each_documents_logits_alone(arch, attention):
    """For every strategy but concat_chunk: a row's logits, document by document, equal that
    document run alone through transformers' own eager attention (1e-5); positions restart at
    0 in every document (decomposition rows: one piece, positions 0..T-1)."""
    model, reference = hf_model(arch, attention), hf_model(arch, "eager")
    packed_rows = 0
    with torch.no_grad():
        for strategy in KEEP_APART:
            batch = first_batch(strategy)
            logits = model(batch.input_ids, batch.position_ids, batch.doc_ids)
            docs = documents(batch)
            for b, s, e in docs:
                pos = batch.position_ids[b, s:e]
                assert torch.equal(pos, torch.arange(e - s)), (strategy, b, s)
                alone = reference(batch.input_ids[b : b + 1, s:e])[0]
                torch.testing.assert_close(logits[b, s:e], alone, atol=1e-5, rtol=1e-5)
            if strategy == "decomposition":
                assert batch.doc_ids is None and batch.shape[1] >= 4
            packed_rows += len(docs) - batch.shape[0]
    assert packed_rows >= 4  # packing strategies really put several documents in a row


@pytest.mark.parametrize("arch", list(ARCHS))
def test_without_doc_ids_documents_see_each_other(arch):
    """The comparison above can fail: the same packed row without its doc_ids (attention
    across documents, as concat_chunk means) changes the later documents' logits."""
    model = hf_model(arch)
    batch = first_batch("concat_chunk_docmask")
    b, s, e = next(d for d in documents(batch) if d[1] > 0)
    with torch.no_grad():
        apart = model(batch.input_ids, batch.position_ids, batch.doc_ids)[b, s:e]
        across = model(batch.input_ids, batch.position_ids, None)[b, s:e]
    assert (apart - across).abs().max() > 1e-3


@pytest.mark.parametrize("attention", IMPLS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_one_document_rows_with_task_position_ids_are_plain_causal(arch, attention):
    """doc_ids None means one document per row, whatever its position ids: task ids (a
    coupled store) that do not count up 0, 1, 2, ... are neither documents nor causality
    (transformers reads both off bare position ids; sdpa/eager did here)."""
    model = hf_model(arch, attention)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 10), generator=g)
    pos = torch.tensor([[0, 1, 2, 7, 8, 9, 3, 4, 5, 6], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    causal = torch.ones(10, 10, dtype=torch.bool).tril().expand(2, 1, 10, 10)
    additive = torch.zeros(causal.shape).masked_fill(~causal, torch.finfo(torch.float32).min)
    with torch.no_grad():  # transformers' eager attention, told the causal mask explicitly
        want = hf_model(arch, "eager").hf(input_ids=ids, position_ids=pos,
                                          attention_mask=additive).logits  # fmt: skip
        got = model(ids, pos)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_flash_attention_gets_the_segments_as_varlen_lengths(monkeypatch):
    """flash_attention_2 (CUDA) keeps documents apart through cu_seq_lens over the flattened
    rows: transformers infers them from position ids only for one-row batches. Checked on CPU
    through a varlen stand-in registered in transformers' attention registry."""
    from transformers import AttentionInterface

    seen = []

    def varlen(module, q, k, v, mask, scaling=None, dropout=0.0, **kw):
        cu = kw["cu_seq_lens_q"].tolist()
        seen.append(cu)
        B, H, T, D = q.shape
        k = k.repeat_interleave(H // k.shape[1], dim=1)
        v = v.repeat_interleave(H // v.shape[1], dim=1)
        flat = [x.transpose(0, 1).reshape(H, B * T, D) for x in (q, k, v)]
        out = torch.cat(
            [
                torch.nn.functional.scaled_dot_product_attention(
                    *(x[:, s:e] for x in flat), is_causal=True, scale=scaling
                )
                for s, e in zip(cu, cu[1:], strict=False)
            ],
            dim=1,
        )
        return out.reshape(H, B, T, D).permute(1, 2, 0, 3), None

    AttentionInterface.register("varlen_stand_in", varlen)
    batch = first_batch("best_fit")
    for arch in ARCHS:
        model = hf_model(arch)
        want = model(batch.input_ids, batch.position_ids, batch.doc_ids)
        model.hf.set_attn_implementation("varlen_stand_in")
        monkeypatch.setattr(model, "attn_implementation", "flash_attention_2")
        with torch.no_grad():
            got = model(batch.input_ids, batch.position_ids, batch.doc_ids)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    runs = [0]  # every run of equal doc ids, padding runs too, row after row
    for row in batch.doc_ids.tolist():
        runs += [1] + [int(a != b) for a, b in zip(row[1:], row[:-1], strict=True)]
    cuts = [i for i, new in enumerate(runs[1:]) if new] + [batch.input_ids.numel()]
    assert seen[0] == cuts and len(cuts) > batch.shape[0] + 1  # documents share rows


# ------------------------------------------------------------------------- dropout, groups


def _varies(model: HFModel, train: bool) -> bool:
    ids = torch.arange(3, 19).view(1, 16)
    model.train(train)
    with torch.no_grad():
        return not torch.equal(model(ids), model(ids))


def test_dropout_maps_onto_the_architectures_fields():
    gpt2 = hf_model("gpt2", emb_dropout=0.1, attn_dropout=0.2, resid_dropout=0.3)
    c = gpt2.config
    assert (c.embd_pdrop, c.attn_pdrop, c.resid_pdrop) == (0.1, 0.2, 0.3)
    assert _varies(gpt2, train=True) and not _varies(gpt2, train=False)
    llama = hf_model("llama", attn_dropout=0.5)  # through lengthwise attention's SDPA
    assert llama.config.attention_dropout == 0.5
    assert _varies(llama, train=True) and not _varies(llama, train=False)
    # our default 0 is no dropout, not the architecture's default (GPT-2's is 0.1)
    plain = hf_model("gpt2").config
    assert (plain.embd_pdrop, plain.attn_pdrop, plain.resid_pdrop) == (0.0, 0.0, 0.0)
    assert not _varies(hf_model("gpt2"), train=True)
    # a value in model.hf.config stands when ours is left at 0
    cfg = ModelConfig(kind="hf", hf={"config": {**ARCHS["gpt2"], "resid_pdrop": 0.25}})
    assert build_hf_model(cfg, VOCAB).config.resid_pdrop == 0.25


def test_dropout_the_architecture_lacks_is_refused():
    with pytest.raises(UserError, match=r"^model.resid_dropout: llama has no such dropout"):
        hf_model("llama", resid_dropout=0.1)
    with pytest.raises(UserError, match=r"^model.emb_dropout: llama has no such dropout"):
        hf_model("llama", emb_dropout=0.1)
    both = {"config": {**ARCHS["gpt2"], "resid_pdrop": 0.25}}
    with pytest.raises(UserError, match=r"model.resid_dropout: .*model.hf.config.resid_pdrop"):
        build_hf_model(ModelConfig(kind="hf", hf=both, resid_dropout=0.1), VOCAB)


def test_special_token_ids_outside_a_fresh_vocabulary_are_none():
    """GPT-2's config class says bos = eos = 50256: no such token in a vocabulary of 48."""
    config = hf_model("gpt2").config
    assert config.bos_token_id is None and config.eos_token_id is None
    given = {**ARCHS["gpt2"], "eos_token_id": 7}
    cfg = ModelConfig(kind="hf", hf={"config": given})
    assert build_hf_model(cfg, VOCAB).config.eos_token_id == 7


@pytest.mark.parametrize("arch", list(ARCHS))
def test_param_groups_decay_matrices_only(arch):
    model = hf_model(arch)
    names = {id(p): n for n, p in model.named_parameters()}
    for decay_embeddings in (False, True):
        groups = model.param_groups(0.1, decay_embeddings)
        decay = {names[id(p)] for p in groups[0]["params"]}
        no_decay = {names[id(p)] for p in groups[1]["params"]}
        assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
        assert not decay & no_decay and decay | no_decay == set(names.values())  # each once
        token = "hf.transformer.wte.weight" if arch == "gpt2" else "hf.model.embed_tokens.weight"
        assert (token in decay) == decay_embeddings
        for n, p in model.named_parameters():
            if n == token:
                continue
            is_table = n.endswith("wpe.weight")  # GPT-2's learned positions: never decayed
            assert (n in decay) == (p.dim() >= 2 and not is_table), n
    assert model.max_positions == (64 if arch == "gpt2" else None)
    assert len(model.blocks) == 2 and model.dims == (2, 32)
    # non-embedding count: GPT-2 leaves out its position table (its token table is the tied
    # output head), Llama its untied token table
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params(non_embedding=False) == total
    tables = 64 * 32 if arch == "gpt2" else VOCAB * 32
    assert model.config.tie_word_embeddings == (arch == "gpt2")
    assert model.num_params() == total - tables


# ------------------------------------------------------------------------------ generation


def naive(model: nn.Module, prompt: list[int], n: int, eos: int) -> list[int]:
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            ids.append(nxt)
    return out


@pytest.mark.parametrize("arch", list(ARCHS))
def test_greedy_generation_equals_a_naive_loop(arch):
    """KV cache, left-padded batches of different prompt lengths: each row's continuation is
    the naive full-recompute loop's."""
    model = hf_model(arch)
    with torch.no_grad():  # a larger scale, so greedy picks differ from row to row
        for p in model.parameters():
            p.mul_(3.0)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (1, 5, 9, 3)]
    first = naive(model, prompts[0], 12, eos=-1)
    stop = next(i for i in range(1, 12) if first[i] not in first[:i])
    eos = first[stop]  # the first prompt stops early, at its first new token after the start
    got = greedy_generate(model, prompts, max_new_tokens=12, eos_id=eos, batch_size=3)
    want = [naive(model, p, 12, eos) for p in prompts]
    assert got == want
    assert len(got[0]) == stop and max(map(len, got)) == 12
    assert len({tuple(x) for x in got}) == 4
