"""Every number README.md and docs/ quote against the committed result file it comes from
(experiments/claims.py): a doc that drifts from its file fails here."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("claims", ROOT / "experiments" / "claims.py")
claims = importlib.util.module_from_spec(_spec)
sys.modules["claims"] = claims  # dataclasses look their module up while the file runs
_spec.loader.exec_module(claims)


@pytest.mark.parametrize("claim", claims.CLAIMS, ids=lambda c: f"{c.doc}:{c.text[:40]}")
def test_each_quoted_number_is_what_its_file_gives(claim):
    doc = claims.normalise((ROOT / claim.doc).read_text())
    expected = claims.normalise(claim.rendered())
    assert expected in doc, f"{claim.doc} should say {expected!r} (from {claim.source})"


@pytest.mark.parametrize("table", claims.TABLES, ids=lambda t: f"{t.doc}:{t.name}")
def test_each_table_is_rendered_from_its_file(table):
    text = (ROOT / table.doc).read_text()
    found = claims.table_pattern(table.name).search(text)
    assert found, f"{table.doc} has no <!-- table:{table.name} --> block"
    assert found.group(0) == claims.table_block(table.name, table.render()), \
        f"{table.doc}:{table.name} is stale: run python experiments/claims.py --write"


def test_a_claim_that_drifts_from_its_file_fails():
    wrong = claims.Claim("README.md", "MSA ran {0:.1f}x faster", "none", lambda: (123456.7,))
    assert claims.normalise(wrong.rendered()) not in claims.normalise((ROOT / "README.md").read_text())


def test_a_ratio_of_two_processes_is_refused():
    with pytest.raises(ValueError, match="different processes"):
        claims.ratio(dict(process="a", median_ms=1.0), dict(process="b", median_ms=2.0))


def test_welch_interval_matches_a_hand_computation():
    # Equal variances and sizes: df = 2 (n - 1) = 4, half width t(4) * sqrt(2 * var / n).
    diff, lo, hi = claims.welch_interval((1.0, 2.0, 3.0), (0.0, 1.0, 2.0))
    assert diff == 1.0 and abs((hi - diff) - 2.776 * (2 * 1.0 / 3) ** 0.5) < 1e-12 and lo < diff < hi
