import pytest

from lengthwise.config import load_config
from lengthwise.errors import UserError

BASE = """
data:
  out_dir: out
  splits:
    train: {kind: jsonl, path: corpus.jsonl}
batching:
  strategy: decomposition
  tokens_per_step: 4096
  max_len: 1024
"""


def _write(tmp_path, text=BASE):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_overrides_are_parsed_and_validated(tmp_path):
    cfg = load_config(
        _write(tmp_path), ["batching.max_len=512", "batching.curriculum.name=grow_p2"]
    )
    assert cfg.batching.max_len == 512
    assert cfg.batching.curriculum.name == "grow_p2"
    assert cfg.batching.curriculum.cycles == 8


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["batching.max_lenn=512"], r"c.yaml: batching.max_lenn: unknown key"),
        (
            ["batching.max_len=1000", "batching.tokens_per_step=4000"],
            r"c.yaml: batching: max_len must be a power of two for decomposition, got 1000",
        ),
        (["batching.tokens_per_step=1000"], r"tokens_per_step \(1000\) must be a multiple"),
        (["batching.strategy=packing"], r"batching.strategy: Input should be 'pad'"),
        (["batching.curriculum.name=grow_p2", "batching.strategy=best_fit"], r"needs strategy"),
        (["batching.curriculum.cycles=0"], r"batching.curriculum.cycles: Input should be greater"),
        (["data.splits.train.kind=csv"], r"data.splits.train.kind"),
        (["batching.max_len"], r"override 'batching.max_len': expected key.sub=value"),
    ],
)
def test_bad_values_name_the_key(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(_write(tmp_path), overrides)


def test_file_problems(tmp_path):
    with pytest.raises(UserError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(_write(tmp_path, "data: [unclosed"))
    with pytest.raises(UserError, match="data: Field required"):
        load_config(_write(tmp_path, "batching: {}"))
