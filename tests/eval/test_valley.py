import json

import pytest

from lengthwise.eval.valley import ValleyRow, format_valley, gaps, valley_table


def row(task, complexity, level, idc, idn, oodc, oodn, **kw):
    return {
        "task": task,
        "complexity": complexity,
        "level": level,
        "id_correct": idc,
        "id_total": idn,
        "ood_correct": oodc,
        "ood_total": oodn,
        **kw,
    }


# Hand-made table. Level 2 has two tasks, summed: ID (40+40)/(50+50) = 0.8, OOD (10+30)/100 = 0.4.
ROWS = [
    row("sort", "O(N^3)", 3, 30, 100, 3, 100),  # out of order on purpose
    row("copy", "O(N)", 1, 90, 100, 80, 100),
    row("add", "O(N^2)", 2, 40, 50, 10, 50),
    row("mul", "O(N^2)", 2, 40, 50, 30, 50),
    row("subset", "O(2^N)", 4, 0, 100, 0, 100),
]
# by hand:           id    ood   abs                 rel
EXPECTED = {
    1: (0.90, 0.80, 0.10, 0.10 / 0.90),
    2: (0.80, 0.40, 0.40, 0.40 / 0.80),
    3: (0.30, 0.03, 0.27, 0.27 / 0.30),
    4: (0.00, 0.00, 0.00, None),  # rel gap undefined at ID accuracy 0
}


def test_hand_made_table():
    table = valley_table(ROWS)
    assert [lv["level"] for lv in table["levels"]] == [1, 2, 3, 4]
    for lv in table["levels"]:
        id_acc, ood_acc, abs_gap, rel_gap = EXPECTED[lv["level"]]
        assert lv["id_acc"] == pytest.approx(id_acc, abs=1e-12)
        assert lv["ood_acc"] == pytest.approx(ood_acc, abs=1e-12)
        assert lv["abs_gap"] == pytest.approx(abs_gap, abs=1e-12)
        assert lv["signed_gap"] == pytest.approx(id_acc - ood_acc, abs=1e-12)
        if rel_gap is None:
            assert lv["rel_gap"] is None and lv["ratio"] is None
        else:
            assert lv["rel_gap"] == pytest.approx(rel_gap, abs=1e-12)
            assert lv["ratio"] == pytest.approx(ood_acc / id_acc, abs=1e-12)
    lv2 = table["levels"][1]
    assert lv2["tasks"] == ["add", "mul"] and lv2["complexity"] == "O(N^2)"
    assert (lv2["id_correct"], lv2["id_total"], lv2["ood_correct"], lv2["ood_total"]) == (
        80,
        100,
        40,
        100,
    )
    # per-task numbers are kept: add alone is 0.8 vs 0.2
    add = next(t for t in table["per_task"] if t["task"] == "add")
    assert add["ood_acc"] == pytest.approx(0.2) and add["abs_gap"] == pytest.approx(0.6)
    # relative gap decides (Scylla's relative_diff): level 3 (0.9) beats level 2 (0.5)
    assert table["critical_by"] == "rel_gap"
    assert table["critical"]["level"] == 3 and table["critical"]["complexity"] == "O(N^3)"
    assert table["critical"]["rel_gap"] == pytest.approx(0.9)
    # by absolute gap it is level 2 (0.4 > 0.27 > 0.1)
    assert valley_table(ROWS, critical_by="abs_gap")["critical"]["level"] == 2
    json.dumps(table, allow_nan=False)


def test_ood_above_id_clamps_gap_like_scylla():
    g = gaps(0.5, 0.7)
    assert g["abs_gap"] == 0.0 and g["rel_gap"] == 0.0
    assert g["signed_gap"] == pytest.approx(-0.2)
    assert g["ratio"] == pytest.approx(1.4)


def test_ties_go_to_the_lowest_level():
    rows = [row("a", "O(N)", 1, 50, 100, 25, 100), row("b", "O(N^2)", 2, 80, 100, 40, 100)]
    assert valley_table(rows)["critical"]["level"] == 1  # both rel gaps 0.5
    # 0.3 - 0.1 and 0.5 - 0.3 differ in floating point; still a tie
    rows = [row("a", "O(N)", 1, 30, 100, 10, 100), row("b", "O(N^2)", 2, 50, 100, 30, 100)]
    assert valley_table(rows, critical_by="abs_gap")["critical"]["level"] == 1
    # all gaps zero: no level leans on what it has seen, so no critical level (it used to be
    # the lowest of the tied zeros, which named a valley where there is none)
    rows = [row("a", "O(N)", 1, 10, 10, 10, 10), row("b", "O(N^2)", 2, 5, 10, 5, 10)]
    assert valley_table(rows)["critical"] is None


def test_unparseable_counts_as_wrong():
    # 10 items: 5 correct, 1 parsed but wrong, 4 unparseable -> 0.5, not 5/6
    table = valley_table([row("a", "O(N)", 1, 5, 10, 2, 10, id_parsed=6, ood_parsed=2)])
    lv = table["levels"][0]
    assert lv["id_acc"] == pytest.approx(0.5)
    assert lv["id_parse_rate"] == pytest.approx(0.6)
    assert lv["ood_acc"] == pytest.approx(0.2)
    assert lv["abs_gap"] == pytest.approx(0.3)


def test_dataclass_rows_and_no_critical_when_undefined():
    rows = [ValleyRow("a", "O(N)", 1, 0, 10, 0, 10), ValleyRow("b", "O(N^2)", 2, 0, 10, 0, 10)]
    table = valley_table(rows)
    assert table["critical"] is None  # rel gap undefined everywhere
    # every gap 0: no valley, not the first of equal zeros
    assert valley_table(rows, critical_by="abs_gap")["critical"] is None
    flat = [ValleyRow("a", "O(N)", 1, 3, 10, 5, 10), ValleyRow("b", "O(N^2)", 2, 1, 10, 1, 10)]
    assert (
        valley_table(flat)["critical"] is None and valley_table(flat)["levels"][0]["abs_gap"] == 0
    )
    assert "none" in format_valley(table)


def test_empty_level_has_no_accuracy():
    lv = valley_table([row("a", "O(N)", 1, 0, 0, 0, 0)])["levels"][0]
    assert lv["id_acc"] is None and lv["abs_gap"] is None


@pytest.mark.parametrize(
    "bad",
    [
        row("a", "O(N)", 1, 11, 10, 0, 10),  # correct > total
        row("a", "O(N)", 1, 5, 10, 0, 10, id_parsed=4),  # parsed < correct
        row("a", "O(N)", 1, -1, 10, 0, 10),
        row("a", "O(N)", 1.5, 1, 10, 0, 10),
        {"task": "a", "complexity": "O(N)", "level": 1},  # missing counts
    ],
)
def test_invalid_rows(bad):
    with pytest.raises(ValueError):
        valley_table([bad])


def test_conflicting_complexity_and_duplicates():
    with pytest.raises(ValueError, match="complexity"):
        valley_table([row("a", "O(N)", 1, 1, 2, 1, 2), row("b", "O(N^2)", 1, 1, 2, 1, 2)])
    with pytest.raises(ValueError, match="twice"):
        valley_table([row("a", "O(N)", 1, 1, 2, 1, 2), row("a", "O(N)", 1, 1, 2, 1, 2)])
    with pytest.raises(ValueError, match="critical_by"):
        valley_table(ROWS, critical_by="ratio")


def test_format_valley_marks_the_critical_level():
    text = format_valley(valley_table(ROWS))
    lines = text.splitlines()
    marked = [ln for ln in lines if ln.endswith("<- critical")]
    assert len(marked) == 1 and "O(N^3)" in marked[0]
    assert "80/100" in text and "40/100" in text
    assert "critical complexity: O(N^3)" in text
    assert lines[0].split()[0] == "level"
