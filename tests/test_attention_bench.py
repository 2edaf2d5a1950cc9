"""benchmarks/attention_backends.py on tiny CPU inputs: the layout it times and the rows it
prints. Speed is not asserted."""

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import attention_backends as bench  # noqa: E402


def test_layout_cuts_every_row_into_the_asked_documents():
    doc = bench.layout(3, 50, 4, torch.Generator().manual_seed(0))
    assert doc.shape == (3, 50) and doc[:, 0].eq(0).all()
    for row in doc:
        assert row.unique().tolist() == [0, 1, 2, 3]  # 4 documents, in order
        assert (row.diff() >= 0).all() and (row.diff() <= 1).all()


def test_rows_time_every_backend_on_the_same_inputs():
    args = argparse.Namespace(
        device="cpu", seq_len=[64], docs=[1, 4, 32], tokens=128, n_head=2, head_dim=8, repeats=1
    )
    rows = bench.measure(args)
    assert [(r["seq_len"], r["rows"], r["docs"]) for r in rows] == [(64, 2, 1), (64, 2, 4)]
    for r in rows:  # 32 documents in 64 tokens is more than T // 8: left out
        # FlexAttention has no CPU backward: every other backend timed, flex shown as "-"
        assert set(r["ms"]) == set(bench.BACKENDS) - {"flex"}
        assert all(ms > 0 for ms in r["ms"].values())
        assert r["vs_per_doc"]["per_doc"] == 1.0 and r["dtype"] == "float32"
        assert bench.format_row(r).split()[:4] == [
            "64",
            "2",
            str(r["docs"]),
            f"{r['ms']['sdpa_causal']:,.1f}",
        ]
        assert bench.format_row(r).split()[5] == "-"


@pytest.mark.parametrize("argv", [["--device", "cuda"]])
def test_cuda_without_a_device_is_exit_2(argv, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["attention_backends.py", *argv])
    assert bench.main() == 2
