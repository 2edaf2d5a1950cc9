"""Few-shot prompting in the task suites (lengthwise.eval.fewshot, `eval --shots`), on a tiny
random Llama with a char-level tokenizer: demonstrations in order and never a test item, seeds
reproduce, the chat template only when asked, token counts equal the tokenized prompts, bad
input is one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the tiny model is a Hugging Face Llama")

from lengthwise.cli import main  # noqa: E402
from lengthwise.config import Config  # noqa: E402
from lengthwise.errors import UserError  # noqa: E402
from lengthwise.eval import suites  # noqa: E402
from lengthwise.eval.fewshot import demonstrations, few_shot_prompt  # noqa: E402
from lengthwise.eval.hf import HFCausalLM  # noqa: E402
from lengthwise.tasks import alphabet, generate_items, get_task  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

CHAT = (
    "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}a:{% endif %}"
)


def _folder(path: Path, chat: bool) -> Path:
    """A random 1-layer Llama over the task alphabet plus newline; a chat template if `chat`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<eos>", "<bos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(alphabet() + "\n")))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    if chat:
        tok.chat_template = CHAT
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=0,
        bos_token_id=1,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fewshot")
    cfg = root / "c.yaml"
    cfg.write_text(
        f"""
data:
  out_dir: {root / "data"}
  tokenizer: {{kind: char}}
  splits:
    train: {{kind: task, task: addition, lengths: [1, 3], n: 50}}
batching: {{strategy: best_fit, tokens_per_step: 256, max_len: 32}}
model: {{n_layer: 1, n_head: 2, d_model: 16}}
train: {{out_dir: {root / "run"}, total_tokens: 256, progress: false, loggers: []}}
"""
    )
    one = root / "one.yaml"  # 1-digit addition: 100 problems in all
    one.write_text(cfg.read_text().replace("lengths: [1, 3]", "lengths: [1, 1]"))
    return {
        "root": root,
        "cfg": cfg,
        "one": one,
        "plain": _folder(root / "plain", chat=False),
        "chat": _folder(root / "chat", chat=True),
    }


def test_demonstrations_distinct_seeded_and_in_order():
    task = get_task("addition")
    demos = demonstrations(task, (1, 3), 6, "scratchpad", seed=0)
    assert demonstrations(task, (1, 3), 6, "scratchpad", seed=0) == demos
    assert demonstrations(task, (1, 3), 6, "scratchpad", seed=1) != demos
    assert len({d.key for d in demos}) == 6 and all(1 <= d.length <= 3 for d in demos)
    assert all(";" in d.completion or d.length == 1 for d in demos)  # the steps are shown
    assert all("|" in d.completion for d in demos)
    banned = {d.key for d in demos[:3]}
    assert not banned & {d.key for d in demonstrations(task, (1, 3), 6, "scratchpad", 0, banned)}
    item = next(iter(generate_items(task, (2, 2), 1, "scratchpad", 5)))
    prompt = few_shot_prompt(demos, item)
    spots = [prompt.index(d.prompt + d.completion + "\n") for d in demos]
    assert spots == sorted(spots) and spots[0] == 0
    assert prompt.endswith("\n" + item.prompt) and prompt.count("\n") == 6
    # the answer is what follows the scratchpad's last "|"; without one nothing parses
    assert task.check(item, "9+9=18;1|" + item.answer) == (True, True)
    assert task.check(item, f"{item.answer}|1") == (True, False)
    assert task.check(item, item.answer) == (False, False)
    # 1-digit addition has 100 problems: 101 distinct demonstrations cannot exist
    with pytest.raises(Exception, match="fewer than 101 distinct problems at lengths 1-1"):
        demonstrations(task, (1, 1), 101, "direct", seed=0)


def _spy(monkeypatch) -> list:
    """Every (items, score) the suites score, in order."""
    seen = []
    real = suites.score_items

    def spy(lm, task, items, **kw):
        score = real(lm, task, items, **kw)
        seen.append((lm, items, score))
        return score

    monkeypatch.setattr(suites, "score_items", spy)
    return seen


def _eval(setup, target: str, out: Path, *extra: str, cfg: str = "cfg") -> int:
    argv = ["eval", str(setup[target]), "--config", str(setup[cfg]), "--out", str(out)]
    return main([*argv, "--n", "3", "--multiples", "1", "2", *extra])


def test_lengths_suite_few_shot(setup, tmp_path, monkeypatch, capsys):
    seen = _spy(monkeypatch)
    argv = ("--suite", "lengths", "--shots", "3", "--format", "scratchpad", "--shots-seed", "4")
    assert _eval(setup, "plain", tmp_path / "a", *argv) == 0
    printed = capsys.readouterr().out
    assert "prompt tok" in printed
    task = get_task("addition")
    demos = demonstrations(task, (1, 3), 3, "scratchpad", seed=4)
    text = "".join(d.prompt + d.completion + "\n" for d in demos)
    base = max(d.length for d in demos)
    assert f"3-shot prompts: 1x is the longest demonstrated length (addition {base})" in printed
    rows = json.loads((tmp_path / "a" / "lengths.json").read_text())["task"]["rows"]
    assert [(r["base_length"], r["length"]) for r in rows] == [(base, base), (base, 2 * base)]
    assert len(seen) == 2
    for (lm, items, score), row in zip(seen, rows, strict=True):
        assert all(it.prompt.startswith(text) and it.fmt == "scratchpad" for it in items)
        assert not {it.key for it in items} & {d.key for d in demos}
        assert all(it.length == row["length"] for it in items)
        lengths = [len(lm.encode(it.prompt)) for it in items]
        assert row["prompt_tokens_mean"] == pytest.approx(sum(lengths) / 3)
        assert row["prompt_tokens_max"] == max(lengths)
        gen = [len(lm.encode(o)) for o in score.outputs]
        assert row["gen_tokens_max"] == max(gen) and row["n"] == 3
    # the same seed reproduces the prompts, another seed draws other demonstrations
    first = [it.prompt for it in seen[0][1]]
    seen.clear()
    assert _eval(setup, "plain", tmp_path / "b", *argv) == 0
    assert [it.prompt for it in seen[0][1]] == first
    seen.clear()
    assert _eval(setup, "plain", tmp_path / "c", *argv[:-1], "5") == 0
    assert not seen[0][1][0].prompt.startswith(text)


def test_chat_template_only_when_asked(setup, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    assert _eval(setup, "chat", tmp_path / "a", "--suite", "valley", "--shots", "2") == 0
    assert all(not it.prompt.startswith("u:") for _, items, _ in seen for it in items)
    seen.clear()
    argv = ("--suite", "valley", "--shots", "2", "--chat-template")
    assert _eval(setup, "chat", tmp_path / "b", *argv) == 0
    demos = demonstrations(get_task("addition"), (1, 3), 2, "direct", seed=0)
    turns = "".join(f"u:{d.prompt}\na:{d.completion}\n" for d in demos)
    for _, items, _ in seen:  # ID items (trained problems) and OOD items alike
        assert all(it.prompt == f"{turns}u:{it.key.split(':')[1]}=\na:" for it in items)
    valley = json.loads((tmp_path / "b" / "valley.json").read_text())
    assert valley["chat_template"] is True and valley["shots"] == 2
    lm = seen[0][0]
    assert isinstance(lm, HFCausalLM)
    want = sum(len(lm.encode(it.prompt)) for it in seen[1][1]) / 3
    assert valley["rows"][0]["ood_prompt_tokens_mean"] == pytest.approx(want)


def test_memorization_few_shot_reports_cost(setup, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    assert _eval(setup, "plain", tmp_path / "m", "--suite", "memorization", "--shots", "1") == 0
    result = json.loads((tmp_path / "m" / "memorization.json").read_text())
    ((_, items, score),) = seen
    assert result["shots"] == 1 and result["n_items"] == 3
    assert result["per_task"]["addition"]["prompt_tokens_max"] == max(
        len(seen[0][0].encode(it.prompt)) for it in items
    )
    assert all(it.prompt.count("=") == 2 for it in items)


@pytest.mark.parametrize(
    "cfg, extra, message",
    [
        ("cfg", ["--shots", "-1"], "--shots: must be >= 0, got -1"),
        ("cfg", ["--shots", "2", "--format", "bogus"], "--format bogus: task 'addition' has no"),
        ("cfg", ["--shots", "1", "--format", "coupled"], "--shots 1: the coupled format's"),
        ("one", ["--shots", "101"], "--shots 101: task 'addition' has fewer than 101 distinct"),
        ("cfg", ["--chat-template"], "--chat-template: plain's tokenizer has no chat_template"),
    ],
)
def test_bad_few_shot_input(setup, tmp_path, capsys, cfg, extra, message):
    out = tmp_path / "ev"
    assert _eval(setup, "plain", out, "--suite", "lengths", *extra, cfg=cfg) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def _eval_cfg(root: Path, **spec) -> Config:
    """A run config on 1-3 digit addition with one task eval set (nothing is prepared: the
    Evaluator reads task sets only)."""
    return Config.model_validate(
        {
            "data": {
                "out_dir": str(root / "data"),
                "tokenizer": {"kind": "char"},
                "splits": {"train": {"kind": "task", "task": "addition", "lengths": [1, 3]}},
            },
            "eval": {"sets": [{"name": "x", "kind": "task", "task": "addition", **spec}]},
        }
    )


def test_eval_set_shots(tmp_path):
    """`shots` in an eval set: demonstrations from the training lengths (1-3) before OOD items
    (5-6 digits), none a test item; shots 0 leaves the items exactly as before."""
    from lengthwise.data.tokenizer import char_tokenizer
    from lengthwise.eval.evaluator import Evaluator

    tok = char_tokenizer()
    spec = {"lengths": [5, 6], "n": 20, "tag": "ood"}
    plain = Evaluator(_eval_cfg(tmp_path, **spec), tok, torch.device("cpu")).items["x"]
    ev = Evaluator(_eval_cfg(tmp_path, shots=4, shots_seed=3, **spec), tok, torch.device("cpu"))
    items = ev.items["x"]
    demos = demonstrations(get_task("addition"), (1, 3), 4, "direct", seed=3)
    text = "".join(d.prompt + d.completion + "\n" for d in demos)
    assert all(it.prompt == text + it.key.split(":")[1] + "=" for it in items)
    assert not {it.key for it in items} & {d.key for d in demos}
    assert [it.key for it in plain] == [it.key for it in items]  # 5-6 digits never collide
    assert all(1 <= d.length <= 3 for d in demos)
    assert ev.positions_needed() > max(len(tok.encode(it.prompt)) for it in plain) + 4 * 5
    with pytest.raises(UserError, match="eval set 'x': shots 101: task 'addition' has fewer"):
        Evaluator(_eval_cfg(tmp_path, shots=101, shots_lengths=[1, 1]), tok, "cpu")
    with pytest.raises(ValueError, match="eval set 'x': shots need a format other than coupled"):
        _eval_cfg(tmp_path, shots=1, format="coupled")


def test_chat_template_refused_for_lengthwise_models(tmp_path):
    """A lengthwise export has no chat template: refused before any weight is read."""
    (tmp_path / "config.json").write_text(json.dumps({"format": "lengthwise"}))
    with pytest.raises(UserError, match="--chat-template: .* is a lengthwise model"):
        suites.load_lm(tmp_path, chat=True)
    with pytest.raises(Exception) as e:  # without chat, it goes on to read the (absent) weights
        suites.load_lm(tmp_path)
    assert "--chat-template" not in str(e.value)
