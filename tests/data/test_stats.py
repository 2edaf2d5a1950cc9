"""data-stats on a store small enough to count by hand: 6 documents of 12 tokens (11 + EOS),
16-token rows, 32 tokens per step, a 1-layer d_model=8 model for the FLOP formula."""

import pytest

from lengthwise.config import STRATEGY_NAMES, BatchingConfig, DataConfig
from lengthwise.data.stats import ModelDims, all_strategy_stats, format_table, json_records
from lengthwise.data.store import TokenStore, prepare

MODEL = ModelDims(n_layer=1, d_model=8)
N = 12 * 1 * 8**2  # non-embedding parameters


def _flops(slots_per_step: int, pairs_per_step: float) -> float:
    return 6 * N * slots_per_step + 12 * 1 * 8 * pairs_per_step


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stats")
    (tmp / "docs.jsonl").write_text('{"text": "abcdefghijk"}\n' * 6)
    cfg = DataConfig.model_validate(
        {
            "out_dir": str(tmp / "out"),
            "tokenizer": {"kind": "char"},
            "splits": {"train": {"kind": "jsonl", "path": str(tmp / "docs.jsonl")}},
        }
    )
    prepare(cfg, progress=False)
    store = TokenStore(tmp / "out" / "train")
    assert store.lengths.tolist() == [12] * 6
    return store


@pytest.fixture(scope="module")
def rows(store):
    batching = BatchingConfig(
        strategy="decomposition", tokens_per_step=32, max_len=16, min_bucket=4
    )
    rows, not_applicable = all_strategy_stats(store, batching, model=MODEL)
    assert not_applicable == {}
    return {r["strategy"]: r for r in rows}


def test_concat_chunk(rows):
    r = rows["concat_chunk"]
    # 72-token stream; a step reads 2 rows x 16 + 1 tokens: steps at 0 and 32; 64 + 33 > 72.
    assert (r["steps_per_epoch"], r["input_tokens"], r["pad_fraction"]) == (2, 64, 0.0)
    assert r["dropped_fraction"] == pytest.approx(8 / 72)
    assert r["target_tokens"] == 64  # every input predicts the next stream token
    # Rows [0,16) [16,32) [32,48) [48,64) hold segments 12+4, 8+8, 4+12, 12+4 (boundaries every
    # 12 tokens): cross pairs = 136 - same-document pairs per row.
    cross = (136 - 78 - 10) + (136 - 36 - 36) + (136 - 10 - 78) + (136 - 78 - 10)
    assert r["cross_doc_pairs"] == cross / 2
    assert r["attn_pairs"] == 2 * 136
    assert (r["attn_flops_ratio"], r["total_flops_ratio"]) == (1.0, 1.0)


def test_concat_chunk_docmask(rows):
    r = rows["concat_chunk_docmask"]
    assert r["cross_doc_pairs"] == 0
    pairs = ((78 + 10) + (36 + 36) + (10 + 78) + (78 + 10)) / 2
    assert r["attn_pairs"] == pairs
    assert r["attn_flops_ratio"] == pytest.approx(pairs / 272)
    assert r["total_flops_ratio"] == pytest.approx(_flops(32, pairs) / _flops(32, 272))
    # A document ending inside a row loses its last target; one cut by the row end keeps it (the
    # extra column holds its next token): rows give 11+4, 7+8, 3+11, 11+4.
    assert r["target_tokens"] == 15 + 15 + 14 + 15


def test_best_fit(rows):
    r = rows["best_fit"]
    # 12-token pieces: one per 16-token bin (12 + 12 > 16), 6 bins, 2 rows per step.
    assert (r["steps_per_epoch"], r["input_tokens"], r["pad_tokens"]) == (3, 72, 24)
    assert r["pad_fraction"] == 0.25 and r["dropped_fraction"] == 0.0
    assert r["target_tokens"] == 6 * 11
    assert r["attn_flops_ratio"] == pytest.approx(2 * 78 / 272)


def test_pad(rows):
    r = rows["pad"]
    # Whole 12-token documents, padded to the longest in the batch (12): no padding at all.
    assert (r["steps_per_epoch"], r["pad_tokens"], r["dropped_fraction"]) == (3, 0, 0.0)
    assert r["mean_seq_len"] == 12
    assert r["total_flops_ratio"] == pytest.approx(_flops(24, 2 * 78) / _flops(32, 272))


def test_decomposition(rows):
    r = rows["decomposition"]
    # 12 = 8 + 4: six 8-pieces (4 rows per step -> 1 step, 2 left over) and six 4-pieces (8 rows
    # per step -> no full step). 32 of 72 tokens trained.
    assert (r["steps_per_epoch"], r["input_tokens"], r["target_tokens"]) == (1, 32, 4 * 7)
    assert r["dropped_fraction"] == pytest.approx(40 / 72)
    s = r["summary"]
    assert s["pieces_per_bucket"] == [6, 6, 0]
    assert s["batches_per_bucket"] == [0, 1, 0]
    assert s["dropped_tokens_remainder"] == 2 * 8 + 6 * 4
    assert r["attn_flops_ratio"] == pytest.approx(4 * 36 / 272)
    assert r["total_flops_ratio"] == pytest.approx(_flops(32, 144) / _flops(32, 272))


NO_STEP = "not one full step of {} tokens in {}; lower batching.tokens_per_step"


@pytest.mark.parametrize(
    "batching, applies, why_not",
    [
        (  # the 12-token documents have no 16-token piece
            {"strategy": "concat_chunk", "tokens_per_step": 32, "max_len": 16, "min_bucket": 16},
            ["pad", "concat_chunk", "concat_chunk_docmask", "best_fit"],
            {
                "decomposition": "no document has a piece of >= 16 tokens "
                "(batching.min_bucket); the longest document has 12 tokens"
            },
        ),
        (  # sizes that only decomposition refuses
            {"strategy": "pad", "tokens_per_step": 48, "max_len": 24},
            ["pad", "concat_chunk", "concat_chunk_docmask", "best_fit"],
            {"decomposition": "batching: max_len must be a power of two for decomposition, got 24"},
        ),
        (  # 129 stream tokens a step from 72, 3 bins of 24 for 4 rows: only pad has a step
            {"strategy": "pad", "tokens_per_step": 128, "max_len": 32},
            ["pad"],
            {
                "concat_chunk": NO_STEP.format(128, "STORE"),
                "concat_chunk_docmask": NO_STEP.format(128, "STORE"),
                "best_fit": NO_STEP.format(128, "STORE"),
                "decomposition": "no document has a piece of >= 32 tokens "
                "(batching.min_bucket); the longest document has 12 tokens",
            },
        ),
    ],
)
def test_strategies_that_do_not_apply_say_why(store, batching, applies, why_not):
    rows, not_applicable = all_strategy_stats(store, BatchingConfig(**batching), model=MODEL)
    assert [r["strategy"] for r in rows] == applies
    assert not_applicable == {k: v.replace("STORE", str(store.path)) for k, v in why_not.items()}
    reference = "concat_chunk" in applies  # FLOP ratios need concat_chunk; None without it
    assert all((r["attn_flops_ratio"] is not None) == reference for r in rows)
    assert all((r["total_flops_ratio"] is not None) == reference for r in rows)
    records = json_records(STRATEGY_NAMES, rows, not_applicable)
    assert [r["strategy"] for r in records] == list(STRATEGY_NAMES)
    assert {r["strategy"]: r["not_applicable"] for r in records if "not_applicable" in r} == (
        not_applicable
    )
    table = format_table(rows)
    assert table.count("n/a") == (0 if reference else 2 * len(rows))


def test_model_dims_count_the_lm_head_as_a_matmul_per_token():
    dims = ModelDims(n_layer=2, d_model=8, vocab=100)
    assert dims.matmul_params == 12 * 2 * 64 + 100 * 8  # blocks + the (vocab x d) head
    assert dims.flops(slots=10, attn_pairs=55) == (6.0 * 2336 * 10, 12.0 * 2 * 8 * 55)
    assert ModelDims(2, 8).matmul_params == 12 * 2 * 64  # vocab 0: blocks only
    exact = ModelDims(2, 8, 100, exact_matmul_params=3000)  # a built model's own count
    assert exact.flops(1, 0) == (18000.0, 0.0)
