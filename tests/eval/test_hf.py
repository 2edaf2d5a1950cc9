"""HFCausalLM on a tiny random LlamaForCausalLM saved to disk with a char-level tokenizer built
locally (no network): batched greedy against one-at-a-time and a naive argmax loop over full
forwards, loglikelihood and token_losses against log_softmax of plain forwards, bad folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from lengthwise.errors import UserError  # noqa: E402
from lengthwise.eval.hf import HFCausalLM  # noqa: E402

CHARS = "abcdefghij0123456789 +=\n"
EOS_TOKEN, BOS_TOKEN, UNK_TOKEN = "<eos>", "<bos>", "<unk>"
PROMPTS = ["a", "abc 12+", "0123456789", "", "j=", "9 9 9 9 9 9 9 9 9 9 9 9 9", "b"]
MAX_NEW = 12


def char_tokenizer(pad: bool):
    """PreTrainedTokenizerFast, one token per character; EOS=0, BOS=1, UNK=2, and no pad token
    unless `pad` (then UNK pads: a pad id distinct from EOS, same vocabulary)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS_TOKEN, BOS_TOKEN, UNK_TOKEN]
    vocab = {t: i for i, t in enumerate(specials + list(CHARS))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(specials)
    kwargs = dict(eos_token=EOS_TOKEN, bos_token=BOS_TOKEN, unk_token=UNK_TOKEN)
    if pad:
        kwargs["pad_token"] = UNK_TOKEN
    return PreTrainedTokenizerFast(tokenizer_object=tk, **kwargs)


def build_model_folder(path: Path, pad: bool = False, seed: int = 0) -> Path:
    """A random 2-layer Llama (hidden 32) and its tokenizer, saved with save_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer(pad)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=0,
        bos_token_id=1,
        pad_token_id=2 if pad else None,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[bool, Path]:
    """{has_pad_token: model folder}: the same weights, the tokenizer with or without a pad
    token."""
    root = tmp_path_factory.mktemp("hf")
    return {pad: build_model_folder(root / f"pad{int(pad)}", pad=pad) for pad in (False, True)}


@pytest.fixture(scope="module")
def lm(folders) -> HFCausalLM:
    return HFCausalLM.from_pretrained(folders[False])


def naive_greedy(model, ids: list[int], max_new: int, stop: set[int]) -> list[int]:
    """Argmax of a full forward (no cache, no padding) per step, stopped before a stop id."""
    seq = list(ids)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            if nxt in stop:
                break
            out.append(nxt)
            seq.append(nxt)
    return out


def test_load_and_basics(lm: HFCausalLM, folders) -> None:
    assert lm.name == folders[False].name
    assert lm.eos_id == 0 and lm.prefix_id == 1
    assert lm.pad_id == lm.eos_id  # no pad token: EOS pads
    assert lm.encode("ab 1") == [3, 4, 23, 14]  # no BOS added
    assert lm.decode(lm.encode("ab 12+=\n")) == "ab 12+=\n"
    padded = HFCausalLM.from_pretrained(folders[True], name="x")
    assert padded.name == "x" and padded.pad_id == 2 and padded.eos_id == 0


@pytest.mark.parametrize("pad", [False, True], ids=["eos_pads", "pad_token"])
def test_greedy_batched_equals_single_and_naive(folders, pad: bool) -> None:
    lm = HFCausalLM.from_pretrained(folders[pad])
    naive = [naive_greedy(lm.model, lm.encode(p) or [lm.prefix_id], MAX_NEW, {0}) for p in PROMPTS]
    # the fixture is only a good test if some rows stop at EOS and some run to MAX_NEW
    lengths = {len(n) for n in naive}
    assert min(lengths) < MAX_NEW and max(lengths) == MAX_NEW, naive
    expected = [lm.decode(n) for n in naive]
    assert lm.greedy(PROMPTS, MAX_NEW) == expected
    assert lm.greedy(PROMPTS, MAX_NEW, batch_size=3) == expected
    assert [lm.greedy([p], MAX_NEW, batch_size=1)[0] for p in PROMPTS] == expected


def test_greedy_edge_cases(lm: HFCausalLM) -> None:
    assert lm.greedy([], 5) == []
    assert lm.greedy(["ab", "c"], 0) == ["", ""]
    one = lm.greedy(["abc 12+"], 1)[0]
    assert len(one) <= 1 and lm.greedy(["abc 12+"], MAX_NEW)[0].startswith(one)


def test_prompt_template(folders) -> None:
    plain = HFCausalLM.from_pretrained(folders[False])
    templated = HFCausalLM.from_pretrained(folders[False], prompt_template="{1+{prompt}=}")
    prompts = ["2", "34", ""]  # other braces stay literal text
    assert templated.greedy(prompts, 8) == plain.greedy([f"{{1+{p}=}}" for p in prompts], 8)
    with pytest.raises(UserError, match="placeholder"):
        HFCausalLM.from_pretrained(folders[False], prompt_template="no placeholder")


def test_generation_config_eos_also_stops(folders) -> None:
    """A second EOS in the model's generation config (chat models) stops generation too."""
    lm = HFCausalLM.from_pretrained(folders[False])
    full = lm.greedy(["0123456789"], MAX_NEW)[0]
    assert len(full) >= 3
    second = lm.encode(full[2])[0]
    lm.model.generation_config.eos_token_id = [0, second]
    lm2 = HFCausalLM(lm.model, lm.tokenizer)
    assert lm2.stop_ids == [0, second]
    assert lm2.greedy(["0123456789"], MAX_NEW)[0] == full[: full.index(full[2])]


def hand_loglikelihood(lm: HFCausalLM, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(ids).logits[0].double(), dim=-1)
    rows = logp[len(ctx) - 1 : len(ctx) - 1 + len(cont)]
    target = torch.tensor(cont)
    total = float(rows.gather(1, target[:, None]).sum())
    return total, bool((rows.argmax(-1) == target).all())


def test_loglikelihood_matches_hand_computation(lm: HFCausalLM) -> None:
    requests = [
        ("abc", " 12"),
        ("0123456789 + 0123456789 =", " 3"),  # trailing space moves to the continuation
        ("", "abc"),  # empty context: [BOS] + continuation
        ("j", "="),
        ("hello", ""),  # empty continuation
    ]
    got = lm.loglikelihood(requests)
    got_single = lm.loglikelihood(requests, batch_size=1)
    assert got[4] == (0.0, True)
    for (ctx, cont), (ll, greedy), (ll1, greedy1) in zip(
        requests[:4], got[:4], got_single[:4], strict=True
    ):
        c_ids = lm.encode(ctx.rstrip()) or [lm.prefix_id]
        x_ids = lm.encode(ctx[len(ctx.rstrip()) :] + cont)
        want_ll, want_greedy = hand_loglikelihood(lm, c_ids, x_ids)
        assert ll == pytest.approx(want_ll, abs=1e-4)
        assert ll1 == pytest.approx(want_ll, abs=1e-4)
        assert greedy == greedy1 == want_greedy
        assert ll < 0
    assert lm.split_request("ab ", "c") == (lm.encode("ab"), lm.encode(" c"))
    assert lm.split_request("", "c") == ([lm.prefix_id], lm.encode("c"))


def test_loglikelihood_is_greedy(lm: HFCausalLM) -> None:
    ctx = "abc 12+"
    cont = lm.greedy([ctx], 3)[0]
    assert len(cont) == 3
    wrong_last = cont[:2] + ("a" if cont[2] != "a" else "b")
    wrong_first = ("a" if cont[0] != "a" else "b") + cont[1:]
    res = lm.loglikelihood([(ctx, cont), (ctx, cont[:1]), (ctx, wrong_last), (ctx, wrong_first)])
    assert [g for _, g in res] == [True, True, False, False]
    assert res[0][0] > res[2][0]  # the greedy continuation is the likelier one


def test_loglikelihood_respects_logit_cap(lm: HFCausalLM, monkeypatch) -> None:
    import lengthwise.eval.hf as hf

    requests = [("abc", " 12"), ("0123", "45"), ("j", "=")]
    want = lm.loglikelihood(requests)
    monkeypatch.setattr(hf, "MAX_LOGIT_ELEMENTS", 1)  # one row per forward
    got = lm.loglikelihood(requests)
    for (a, ga), (b, gb) in zip(got, want, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb


def test_token_losses(lm: HFCausalLM) -> None:
    ids = lm.encode("0123456789 abc")
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0]
    want = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    assert lm.token_losses(ids) == pytest.approx(want.tolist(), abs=1e-5)
    assert lm.token_losses(ids[:1]) == [] and lm.token_losses([]) == []


def test_bad_folders(tmp_path: Path, folders) -> None:
    def check(path: Path, match: str) -> None:
        with pytest.raises(UserError, match=match) as info:
            HFCausalLM.from_pretrained(path)
        msg = str(info.value)
        assert str(path) in msg and "\n" not in msg, msg

    check(tmp_path / "missing", "not a folder")
    (tmp_path / "empty").mkdir()
    check(tmp_path / "empty", "no config.json")

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("{not json")
    check(garbage, "not a loadable causal LM")

    encoder = tmp_path / "encoder"  # a complete model folder, but not a causal LM architecture
    cfg = transformers.DistilBertConfig(vocab_size=10, dim=8, n_layers=1, n_heads=2, hidden_dim=16)
    transformers.DistilBertModel(cfg).save_pretrained(encoder)
    check(encoder, "not a loadable causal LM.*AutoModelForCausalLM")

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((folders[False] / "config.json").read_text())
    check(no_weights, "not a loadable causal LM")

    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tokenizer / f).write_bytes((folders[False] / f).read_bytes())
    check(no_tokenizer, "tokenizer")

    remote = tmp_path / "remote_code"  # custom code is never executed
    remote.mkdir()
    cfg = json.loads((folders[False] / "config.json").read_text())
    cfg.update(model_type="my_custom", auto_map={"AutoModelForCausalLM": "modeling.MyLM"})
    (remote / "config.json").write_text(json.dumps(cfg))
    check(remote, "not a loadable causal LM")


def test_transformers_missing(monkeypatch, folders) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import raises ImportError
    with pytest.raises(UserError, match=r"pip install 'lengthwise\[hf\]'"):
        HFCausalLM.from_pretrained(folders[False])


def test_suites_load_lm_picks_hf(folders) -> None:
    from lengthwise.eval.suites import load_lm

    lm = load_lm(folders[False], prompt_template="{prompt}=")
    assert isinstance(lm, HFCausalLM) and lm.prompt_template == "{prompt}="
