"""The README's result tables are the shipped reference runs', generated, never typed in."""

from __future__ import annotations

import pytest

from mmlib.errors import MMLibError
from mmlib.experiments.results.readme_blocks import README, drifted, render


def test_the_readmes_result_blocks_match_the_shipped_reference_runs():
    text = README.read_text()
    assert "<!-- mmlib:table3:" in text
    assert drifted(text) == [], "run: python -m mmlib.experiments.results.readme_blocks"


def test_a_hand_edited_number_in_a_block_is_caught():
    text = README.read_text()
    start = text.index("<!-- mmlib:table3:")
    body = text.index("\n", start) + 1
    edited = text[:body] + "| a row typed by hand |\n" + text[body:]
    assert any(b.startswith("table3:") for b in drifted(edited))


def test_a_block_naming_no_shipped_run_is_refused():
    with pytest.raises(MMLibError, match="names no shipped reference run"):
        render("<!-- mmlib:table3:no-such-run -->\n<!-- /mmlib -->\n")
