"""The validation and evaluation reports, rendered from small real inputs and read back as HTML.

The validation report comes from a CSV run through the real ingest and validate steps; the evaluation
report from an Evaluation whose metrics, curves and slices the evaluate module computes from scores.
Tables are read back with html.parser, so the checks look at what a reader sees (cells, headers,
classes), not at how the markup happens to be spelt.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from components.core import report_style
from components.core.spec import parse_spec
from components.data.report import report_html as validation_html
from components.data.validate import validate
from components.evaluation.evaluate import Evaluation, GatePolicy, checks, classification_metrics, curves
from components.evaluation.policy import SlicePolicy
from components.evaluation.report import COMPARED
from components.evaluation.report import report_html as evaluation_html
from components.evaluation.slices import slice_gaps, slice_table
from tests.conftest import ingest_frame

HOSTILE = "<script>alert('x')</script>"


class Tables(HTMLParser):
    """Every table of a page: (the heading above it, rows of cells); a cell is (text, class, tag)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[tuple[str, list[list[tuple[str, str, str]]]]] = []
        self.heading, self._in_heading = "", False
        self._rows: list[list[tuple[str, str, str]]] | None = None
        self._cell: list[str] | None = None
        self._cell_attrs: tuple[str, str] = ("", "")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h2", "h3"):
            self.heading, self._in_heading = "", True
        elif tag == "table":
            self._rows = []
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell, self._cell_attrs = [], (dict(attrs).get("class") or "", tag)
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "h3"):
            self._in_heading = False
        elif tag in ("td", "th") and self._cell is not None and self._rows is not None:
            self._rows[-1].append(("".join(self._cell).strip(), *self._cell_attrs))
            self._cell = None
        elif tag == "table" and self._rows is not None:
            self.tables.append((self.heading, self._rows))
            self._rows = None

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self.heading += data
        if self._cell is not None:
            self._cell.append(data)


def tables(page: str) -> list[tuple[str, list[list[tuple[str, str, str]]]]]:
    parser = Tables()
    parser.feed(page)
    return parser.tables


def table_under(page: str, heading: str) -> list[list[tuple[str, str, str]]]:
    found = [rows for h, rows in tables(page) if h.startswith(heading)]
    assert found, f"no table under a heading starting {heading!r}; headings: {[h for h, _ in tables(page)]}"
    return found[0]


def number(text: str) -> int:
    return int(re.match(r"[\d,]+", text).group(0).replace(",", ""))  # type: ignore[union-attr]


def test_one_style_and_escaping_helpers():
    assert report_style.esc(HOSTILE) == "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert report_style.esc(report_style.esc("<b>")) == "&lt;b&gt;"  # escaped once, never twice
    cell = report_style.table(["a"], [[HOSTILE], [report_style.Cell(HOSTILE, "bad")]])
    assert "<script>" not in cell and '<td class="bad">&lt;script&gt;' in cell
    assert "(missing)" in report_style.value_text(None) and "(blank)" in report_style.value_text("")
    long = report_style.value_text("x" * 10_000)
    assert "10,000 characters" in long and len(long) < 1_000
    page = report_style.page(HOSTILE, report_style.banner("fail", HOSTILE))
    assert "<script>" not in page and page.count("<style>") == 1
    with pytest.raises(ValueError, match="pass, warn or fail"):
        report_style.banner("maybe", "x")


# --- the validation report ------------------------------------------------------------------------------

SPEC = {
    "name": "payments",
    "label": {"column": "is_fraud", "positive": "1", "negative": "0"},
    "entity": "payment_ref",
    "timestamp": "paid_at",
    "features": {"numeric": {"amount": {"min": 0}}, "categorical": {"channel": {"values": ["web", "shop"]}}},
}


def write_payments(path, good: int = 60) -> None:
    """`good` valid rows, then four bad ones (CSV lines good+2 .. good+5; the header is line 1)."""
    lines = ["payment_ref,paid_at,is_fraud,amount,channel"]
    lines += [f"p{i},2026-01-01T{i % 24:02d}:00:00Z,{i % 2},{i + 1}.5,{'web' if i % 3 else 'shop'}" for i in range(good)]
    lines += [
        f'x1,2026-01-02T00:00:00Z,0,"{HOSTILE}",web',  # not a number, and hostile
        "x2,2026-01-02T01:00:00Z,1,-4,web",  # below the minimum
        "x3,2026-01-02T02:00:00Z,0,7,<b>kiosk</b>",  # not an allowed channel, and markup
        "x4,2099-01-01T00:00:00Z,0,3,shop",  # in the future
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def payments(tmp_path, state_dir):
    spec = parse_spec(SPEC)
    src = tmp_path / "in put" / "payments.csv"  # a space in the path: shown whole, as it is
    src.parent.mkdir()
    write_payments(src)
    raw = ingest_frame(spec, src, state_dir)
    outcome = validate(spec, raw, run_id="run-1", source=str(src))
    lineage = {"dataset": spec.name, "run_id": "run-1", "quarantine_store": str(tmp_path / "q.parquet")}
    return spec, src, outcome, validation_html(spec, outcome, str(src), lineage)


def test_validation_report_banner_says_pass_or_fail_by_the_spec_limit(payments, tmp_path, state_dir):
    spec, src, outcome, page = payments
    assert len(outcome.quarantined) == 4
    assert '<div class="verdict warn" role="status"><h1>Validation of payments: PASS</h1>' in page
    assert "60 of 64 rows valid; 4 quarantined (6.25%), within the limit of 20%." in page

    strict = parse_spec({**SPEC, "validation": {"max_bad_fraction": 0.05}})
    failing = validation_html(strict, outcome, str(src))
    assert '<div class="verdict fail" role="status"><h1>Validation of payments: FAIL</h1>' in failing
    assert "above the limit of 5%: the run stops here" in failing

    clean = tmp_path / "clean.csv"
    write_payments(clean)
    clean.write_text("\n".join(clean.read_text().splitlines()[:-4]) + "\n")
    ok = validate(spec, ingest_frame(spec, clean, state_dir), run_id="r2", source=str(clean))
    assert '<div class="verdict pass" role="status"><h1>Validation of payments: PASS</h1>' in validation_html(spec, ok, str(clean))


def test_validation_report_uses_the_users_column_names(payments):
    _, _, _, page = payments
    checks_table = table_under(page, "Checks")
    columns = {row[0][0] for row in checks_table[1:]}
    assert {"payment_ref", "paid_at", "is_fraud", "amount", "channel", "payment_ref, paid_at"} <= columns
    for internal in ("event_timestamp", "__raw", "as_of", "source_line", "row_id", ">label<"):
        assert internal not in page, internal
    # every example table is headed by the user's columns, after the file and line
    header = [text for text, _, _ in table_under(page, "amount: must be a number")[0]]
    assert header == ["file", "line", "payment_ref", "paid_at", "is_fraud", "amount", "channel"]


def test_validation_examples_show_the_whole_file_the_line_and_the_failing_value(payments):
    _, src, outcome, page = payments
    expectations = {
        "amount: must be a number": (62, "amount", HOSTILE),
        "amount: must be at least 0": (63, "amount", "-4"),
        "channel: must be one of: web, shop": (64, "channel", "<b>kiosk</b>"),
        "paid_at: must not be later than its file's first ingestion": (65, "paid_at", "2099-01-01T00:00:00Z"),
    }
    for heading, (line, column, value) in expectations.items():
        header, *rows = table_under(page, heading)
        assert len(rows) == 1, heading
        names = [text for text, _, _ in header]
        cells = dict(zip(names, rows[0]))
        assert cells["file"][0] == str(src)  # the whole path, not a shortened one
        assert number(cells["line"][0]) == line
        assert src.read_text().splitlines()[line - 1].startswith(cells["payment_ref"][0] + ",")  # that line of the file
        assert cells[column][:2] == (value, "bad"), heading  # the failing value, highlighted
        assert [n for n, (_, cls, _) in cells.items() if "bad" in cls] == [column]  # and nothing else
        assert "bad" in dict(zip(names, [cls for _, cls, _ in header]))[column]
    # the checks table links each failing check to its examples and gives GX's count
    failing = {
        row[0][0] + ": " + row[1][0].split(" expect_")[0]: number(row[3][0])
        for row in table_under(page, "Checks")[1:]
        if "fail" in row[3][1] or number(row[3][0])
    }
    assert sum(failing.values()) == sum(outcome.failures.values()) == 4


def test_validation_report_escapes_user_data(payments):
    _, _, _, page = payments
    assert "<script>" not in page and "<b>kiosk" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page and "&lt;b&gt;kiosk&lt;/b&gt;" in page
    assert re.findall(r"<(\w+)", page.split("<body>")[1]) and not {t.lower() for t in re.findall(r"<(\w+)", page)} & {
        "script",
        "iframe",
        "img",
    }


def test_validation_report_without_entity_or_timestamp_names_what_stands_in(tmp_path, state_dir):
    spec = parse_spec({"name": "bare", "label": {"column": "y", "positive": "1"}, "features": {"numeric": {"v": {"max": 10}}}})
    src = tmp_path / "bare.csv"
    src.write_text("v,y\n1,0\n2,1\n99,0\n" + "".join(f"{i % 9},{i % 2}\n" for i in range(20)))
    out = validate(spec, ingest_frame(spec, src, state_dir), run_id="r", source=str(src))
    page = validation_html(spec, out, str(src))
    header, row = table_under(page, "v: must be at most 10")
    names = [t for t, _, _ in header]
    assert names == ["file", "line", "generated row id", "y", "v"]  # no event time column the user never had
    assert dict(zip(names, row))["v"][:2] == ("99", "bad") and number(dict(zip(names, row))["line"][0]) == 4
    assert "event_timestamp" not in page and "row_id" not in page


# --- the evaluation report ------------------------------------------------------------------------------

THRESHOLD = 0.37


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(3)
    n = 900
    y = (rng.random(n) < 0.2).astype(int)
    p = np.clip(rng.normal(0.25 + 0.35 * y, 0.18), 0, 1)
    p[:3] = [0.0, 1.0, 0.3]  # the edges of the first and last bins, and a bin boundary
    country = rng.choice(["A", "B", HOSTILE], n, p=[0.6, 0.3, 0.1])
    test = pd.DataFrame({"country": country, "label": y})
    return y, p, test


def make_evaluation(y, p, test, policy: GatePolicy) -> Evaluation:
    """An Evaluation as evaluate() assembles it, from scores instead of a bundle."""
    metrics = classification_metrics(y, p, THRESHOLD)
    metrics.update({"latency_p50_ms": 0.2, "latency_p99_ms": 0.4})
    ev = Evaluation(metrics=metrics, passed=False, reasons=[], policy=policy, curves=curves(y, p, THRESHOLD))
    ev.data = {"rows": len(y), "positives": int(y.sum()), "from": "2026-01-01", "to": "2026-01-31"}
    ev.slices = slice_table(test, y, p, THRESHOLD, policy.slices)
    ev.slice_gaps = slice_gaps(ev.slices, policy.slices)
    ev.lineage = {"dataset": "payments", "bundle_sha256": "abc"}
    ev.checks = checks(metrics, policy, None, ev.slice_gaps)
    ev.reasons = [c.message for c in ev.checks if not c.passed]
    ev.passed = not ev.reasons
    return ev


POLICY = GatePolicy(
    min_roc_auc=0.6,
    baseline=None,
    importance_repeats=0,
    max_regression={},
    slices=SlicePolicy(attributes=("country",), min_rows=50, min_positives=5, max_gap={"roc_auc": 0.5}),
)


def test_evaluation_banner_passes_and_fails_with_the_gate(scored):
    y, p, test = scored
    passed = evaluation_html(make_evaluation(y, p, test, POLICY), "fraud", "3")
    assert '<div class="verdict pass" role="status"><h1>fraud v3: gate PASS</h1>' in passed
    failed = evaluation_html(make_evaluation(y, p, test, GatePolicy(min_roc_auc=0.999, baseline=None, importance_repeats=0)), "fraud", "3")
    assert '<div class="verdict fail" role="status"><h1>fraud v3: gate FAIL</h1>' in failed
    assert "roc_auc" in failed and "is below the minimum 0.9990" in failed


def test_confusion_matrix_at_the_threshold_matches_the_data(scored):
    y, p, test = scored
    page = evaluation_html(make_evaluation(y, p, test, POLICY), "fraud", "3")
    assert "at or above <b>0.3700</b>" in page
    header, *rows = table_under(page, "Decision threshold and confusion matrix")
    assert [t for t, _, _ in header] == ["", "predicted positive", "predicted negative", "total"]
    called = p >= THRESHOLD
    expected = {
        ("actual positive", "predicted positive"): int((called & (y == 1)).sum()),
        ("actual positive", "predicted negative"): int((~called & (y == 1)).sum()),
        ("actual negative", "predicted positive"): int((called & (y == 0)).sum()),
        ("actual negative", "predicted negative"): int((~called & (y == 0)).sum()),
    }
    shown = {(row[0][0], header[i][0]): number(row[i][0]) for row in rows for i in (1, 2) if row[0][0].startswith("actual")}
    assert shown == expected
    assert (
        "true positives (TP)" in page
        and "false negatives (FN)" in page
        and "false positives (FP)" in page
        and "true negatives (TN)" in page
    )
    totals = {row[0][0]: [number(c[0]) for c in row[1:]] for row in rows}
    assert totals["total"] == [int(called.sum()), int((~called).sum()), len(y)]
    tp, fp = expected[("actual positive", "predicted positive")], expected[("actual negative", "predicted positive")]
    assert f"precision TP / (TP + FP) = {tp / (tp + fp):.4f}" in page


def test_calibration_bins_count_every_row_and_give_the_ece(scored):
    y, p, test = scored
    ev = make_evaluation(y, p, test, POLICY)
    cal = ev.curves["calibration"]
    assert sum(cal["rows"]) == len(y)
    assert set(cal["lower"]) <= {k / 10 for k in range(10)}  # the edges are the labels: 0.3, not 0.30000000000000004
    for lo, hi, n in zip(cal["lower"], cal["upper"], cal["rows"]):  # each bin as its label says: [lo, hi), the last [0.9, 1]
        inside = (p >= lo) & ((p < hi) if hi < 1 else (p <= 1))
        assert n == int(inside.sum()), (lo, hi)
    ece = sum(n * abs(a - b) for n, a, b in zip(cal["rows"], cal["predicted"], cal["true"])) / len(y)
    assert ece == pytest.approx(ev.metrics["ece"], abs=1e-12)
    page = evaluation_html(ev, "fraud", "3")
    _, *rows = next(r for _, r in tables(page) if r and r[0][0][0] == "score bin")
    assert sum(number(r[1][0]) for r in rows) == len(y)


def test_each_headline_metric_says_what_it_means(scored):
    y, p, test = scored
    ev = make_evaluation(y, p, test, POLICY)
    page = evaluation_html(ev, "fraud", "3")
    header, *rows = table_under(page, "This version, the champion and a baseline")
    assert header[-1][0] == "what it means"
    meaning = {row[0][0]: row[-1][0] for row in rows}
    assert set(meaning) == {label for _, label, _ in COMPARED}
    assert all(len(m) > 30 for m in meaning.values())
    assert "coin flip" in meaning["ROC-AUC"]
    base = y.mean()
    assert f"{base:.4f}" in meaning["PR-AUC (average precision)"]  # random scores' average precision
    assert f"{base * (1 - base):.4f}" in meaning["Brier score"]  # always scoring the base rate
    assert "0.3700" in meaning["F1 at the threshold"]


def test_evaluation_report_escapes_and_shares_the_validation_style(scored, payments):
    y, p, test = scored
    page = evaluation_html(make_evaluation(y, p, test, POLICY), "fraud<i>", "3")
    assert "<script>" not in page and "<i>" not in page and "&lt;script&gt;" in page
    values = [row[0][0] for row in next(r for h, r in tables(page) if h == "By country")[1:]]
    assert HOSTILE in values  # the hostile slice value is a row, shown as text
    _, _, _, validation_page = payments
    for rendered in (page, validation_page):
        assert rendered.count("<style>") == 1 and report_style.CSS in rendered
