import pytest

from lengthwise import config
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


def test_config_reference_is_current_and_covers_every_key():
    from pathlib import Path

    from pydantic import BaseModel

    from lengthwise import config_reference as ref

    doc = ref.reference()
    path = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert path.read_text() == doc, "stale: python -m lengthwise.config_reference > docs/config.md"
    models = [m for m in vars(config).values() if isinstance(m, type) and issubclass(m, BaseModel)]
    for model in models:
        if model in (config.Strict, config.Config, BaseModel):  # Config: one section per key
            continue
        for name in model.model_fields:
            assert f"| `{name}` |" in doc, f"{model.__name__}.{name} missing"
    comments = ref.field_comments(config.SourceConfig)
    assert comments["glob"] == "text_dir: recursive pattern relative to `path`"
    assert comments["label_noise"].startswith("share of documents whose last answer digit")
    assert ref.type_name(config.BatchingConfig.model_fields["long_doc_rule"].annotation) == (
        "repeat \\| random"
    )
