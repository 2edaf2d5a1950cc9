import numpy as np
import torch

from lengthwise.batch import IGNORE_INDEX
from lengthwise.data.plan import StepPlan, assemble, plan_counts

# Store: doc0 = 10 11 12 (EOS=2 appended -> 10 11 12 2), doc1 = 20 21 2, doc2 = 30 2
TOKENS = np.array([10, 11, 12, 2, 20, 21, 2, 30, 2], dtype=np.uint16)
PAD = 0


def _plan(**kw):
    base = dict(
        n_rows=2,
        seq_len=4,
        row=np.array([0, 0, 1]),
        col=np.array([0, 2, 0]),
        src=np.array([0, 7, 4]),
        length=np.array([2, 2, 3]),
        doc=np.array([0, 2, 1]),
        doc_mask=True,
    )
    base.update(kw)
    return StepPlan(**base)


def test_packed_rows_mask_targets_and_restart_positions():
    b = assemble(TOKENS, _plan(), PAD)
    assert b.input_ids.tolist() == [[10, 11, 30, 2], [20, 21, 2, PAD]]
    assert b.targets.tolist() == [
        [11, IGNORE_INDEX, 2, IGNORE_INDEX],
        [21, 2, IGNORE_INDEX, IGNORE_INDEX],
    ]
    assert b.position_ids.tolist() == [[0, 1, 0, 1], [0, 1, 2, 0]]
    assert b.doc_ids.tolist() == [[0, 0, 1, 1], [0, 0, 0, -1]]
    assert b.n_target_tokens == 4
    assert b.input_ids.dtype == torch.int64


def test_stream_rows_use_extra_column_and_may_cross_documents():
    # One row of T=4 reading 5 stream tokens: 11 12 2 | 20 21 (doc0 tail, doc1 head).
    plan = _plan(
        n_rows=1,
        row=np.array([0, 0]),
        col=np.array([0, 3]),
        src=np.array([1, 4]),
        length=np.array([3, 2]),
        doc=np.array([0, 1]),
        doc_mask=False,
        cross_doc_targets=True,
        restart_positions=False,
    )
    b = assemble(TOKENS, plan, PAD)
    assert b.input_ids.tolist() == [[11, 12, 2, 20]]
    assert b.targets.tolist() == [[12, 2, 20, 21]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3]]
    assert b.doc_ids is None
    c = plan_counts(plan)
    assert (c.target_tokens, c.input_tokens, c.pad_tokens) == (4, 4, 0)
    assert c.cross_doc_pairs == 4 * 5 // 2 - (3 * 4 // 2 + 1)
    masked = assemble(TOKENS, _plan(**{**plan.__dict__, "cross_doc_targets": False}), PAD)
    assert masked.targets.tolist() == [[12, 2, IGNORE_INDEX, 21]]


def test_counts_match_assembled_batch():
    plan = _plan()
    b = assemble(TOKENS, plan, PAD)
    c = plan_counts(plan)
    assert c.target_tokens == b.n_target_tokens
    assert c.input_tokens == int((b.doc_ids >= 0).sum())
    assert c.pad_tokens == 1
    assert c.attn_pairs == 3 + 3 + 6  # segments of 2, 2 and 3 input tokens
    assert c.cross_doc_pairs == 0
