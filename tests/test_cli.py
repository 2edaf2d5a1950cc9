"""The command line as a user meets it: exit codes, one-line errors, the demo config. Only
`--help` starts `python -m lengthwise`; the rest call `cli.main` in this process (the same exit
codes and output, without ~1-3 s of interpreter and torch start-up per call)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "lengthwise", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def cli(capsys, *args):
    """The CLI in this process (no interpreter start-up per case): (exit code, stdout, stderr)."""
    from lengthwise.cli import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _config(tmp_path, source: str, strategy="decomposition"):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"""
data:
  out_dir: {tmp_path / "out"}
  tokenizer: {{kind: char}}
  splits:
    train: {source}
batching: {{strategy: {strategy}, tokens_per_step: 256, max_len: 64, min_bucket: 8}}
"""
    )
    return cfg


def _jsonl(tmp_path, n=40):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": "lorem ipsum " * (1 + (i * 7) % 23)}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    assert "prepare" in out.stdout and "data-stats" in out.stdout


def test_prepare_then_stats_json(tmp_path, capsys):
    cfg = _config(tmp_path, f"{{kind: jsonl, path: {_jsonl(tmp_path)}}}")
    rc, _, err = cli(capsys, "prepare", cfg)
    assert rc == 0, err
    rc, out, _ = cli(capsys, "prepare", cfg)
    assert rc == 0 and "train: up to date (40 docs" in out
    rc, out, err = cli(capsys, "data-stats", cfg, "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert [r["strategy"] for r in rows] == [
        "pad",
        "concat_chunk",
        "concat_chunk_docmask",
        "best_fit",
        "decomposition",
    ]
    for r in rows:
        for key in ("pad_fraction", "dropped_fraction", "cross_doc_pairs", "attn_flops_ratio"):
            assert isinstance(r[key], float | int), (r["strategy"], key)
    by = {r["strategy"]: r for r in rows}
    assert by["concat_chunk"]["attn_flops_ratio"] == 1.0
    assert by["concat_chunk"]["cross_doc_pairs"] > 0
    assert all(by[s]["cross_doc_pairs"] == 0 for s in by if s != "concat_chunk")
    assert by["decomposition"]["pad_fraction"] == 0.0
    rc, out, _ = cli(capsys, "data-stats", cfg, "batching.tokens_per_step=512")
    assert rc == 0 and "decomposition" in out


@pytest.mark.parametrize(
    "source, message",
    [
        ("{kind: jsonl, path: /nonexistent/x.jsonl}", "/nonexistent/x.jsonl: "),
        ("{kind: text_dir, path: EMPTYDIR}", "no files match"),
        ("{kind: jsonl, path: BADJSON}", "bad.jsonl:2: not valid JSON"),
        ("{kind: jsonl, path: BADFIELD}", "no field 'text'"),
        (
            "{kind: jsonl, path: x.jsonl, textfield: body}",
            "data.splits.train.textfield: unknown key",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, source, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    (tmp_path / "field.jsonl").write_text('{"body": "ok"}\n')
    source = (
        source.replace("EMPTYDIR", str(tmp_path / "empty"))
        .replace("BADJSON", str(tmp_path / "bad.jsonl"))
        .replace("BADFIELD", str(tmp_path / "field.jsonl"))
    )
    rc, _, err = cli(capsys, "prepare", _config(tmp_path, source))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lengthwise: error: "), err
    assert message in lines[0]
    assert not (tmp_path / "out" / "train").exists()
    leftovers = list((tmp_path / "out").glob(".*")) if (tmp_path / "out").exists() else []
    assert leftovers == []


def test_stats_before_prepare_is_a_clear_error(tmp_path, capsys):
    cfg = _config(tmp_path, f"{{kind: jsonl, path: {_jsonl(tmp_path)}}}")
    rc, _, err = cli(capsys, "data-stats", cfg)
    assert rc == 2
    assert "not a token store (no meta.json); run `lengthwise prepare`" in err


def test_train_summary_counts_significant_alerts_apart_from_noise(tmp_path, capsys, monkeypatch):
    import lengthwise.train.trainer as trainer

    cfg = _config(tmp_path, f"{{kind: jsonl, path: {_jsonl(tmp_path)}}}")
    summary = {"stop_reason": "completed", "steps": 3, "tokens": 768, "wall_seconds": 1.0}
    summary |= {"final": {"ood/acc": 0.5}, "alerts": 58}
    sig = {"alerts_significant": 3}
    for counts, line in (
        ({**sig, "alerts_within_noise": 55}, "58 (3 significant, 55 within noise)"),
        ({**sig, "alerts_within_noise": 50}, "58 (3 significant, 50 within noise, 5 of unknown "
         "noise)"),
        ({}, "58"),  # a run that ended before alerts carried a significance
    ):  # fmt: skip
        monkeypatch.setattr(trainer, "train", lambda cfg, **kw: {**summary, **counts})  # noqa: B023
        rc, out, _ = cli(capsys, "train", cfg)
        assert rc == 0 and f"\nOOD alerts: {line}\nrun: " in out
    monkeypatch.setattr(trainer, "train", lambda cfg, **kw: {**summary, "alerts": 0})
    assert "OOD alerts" not in cli(capsys, "train", cfg)[1]


@pytest.fixture(scope="module")
def demo_task(tmp_path_factory):
    """The shipped configs/demo_task.yaml with 2,000 items in a temporary data dir: problems of
    at most 28 characters, so decomposition (smallest bucket 32) has nothing to train on."""
    from lengthwise.cli import main

    tmp = tmp_path_factory.mktemp("demo_task")
    args = [ROOT / "configs" / "demo_task.yaml", f"data.out_dir={tmp}", "data.splits.train.n=2000"]
    assert main(["prepare", "--quiet", *map(str, args)]) == 0
    return args


NO_PIECE = (
    "no document has a piece of >= 32 tokens (batching.min_bucket); "
    "the longest document has 28 tokens"
)


def test_data_stats_shows_the_strategies_that_apply_and_why_not_the_others(demo_task, capsys):
    rc, out, _ = cli(capsys, "data-stats", *demo_task)
    assert rc == 0
    table = {line.split()[0]: line for line in out.splitlines()[3:7]}
    assert list(table) == ["pad", "concat_chunk", "concat_chunk_docmask", "best_fit"]
    assert table["concat_chunk"].endswith("1.000x       1.000x")
    assert f"decomposition: not applicable: {NO_PIECE}\n" in out
    rc, out, _ = cli(capsys, "data-stats", *demo_task, "--json")
    records = json.loads(out)
    assert rc == 0 and [r["strategy"] for r in records][-1] == "decomposition"
    assert records[-1] == {"strategy": "decomposition", "not_applicable": NO_PIECE}
    assert [r["pad_fraction"] > 0.3 for r in records[:4]] == [True, False, False, False]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--strategies", "decomposition"], f"no strategy applies: decomposition: {NO_PIECE}"),
        (["--n-layer", "0", "--d-model", "0"], "--n-layer: must be >= 1 (a model size for"),
        (
            ["--d-model", "-3"],
            "--d-model: must be >= 1 (a model size for the FLOP estimate), got -3",
        ),
        (["--strategies", "pad,packed"], "--strategies: unknown ['packed'] (choose from pad, "),
    ],
)
def test_data_stats_bad_flags_are_one_line_exit_2(demo_task, capsys, flags, message):
    rc, out, err = cli(capsys, "data-stats", *demo_task, *flags)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("lengthwise: error: "), err
    assert message in lines[0]
    assert out == ""
