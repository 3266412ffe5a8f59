"""The README's result tables, generated from the shipped reference runs, never copied by hand.

A block in README.md sits between two markers and names what it shows and from which run:

    <!-- mmlib:table3:quick-cpu -->
    ...generated...
    <!-- /mmlib -->

`<!-- mmlib:deviations:presets -->` is the one block made from the presets rather than a run: the
protocol at every preset beside the paper's.

`python -m mmlib.experiments.results.readme_blocks` rewrites every block from mmlib/reference/;
`--check` exits 1 naming the blocks that drifted (the test suite runs the same check).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from mmlib.atomic_files import atomic_write_text
from mmlib.errors import MMLibError
from mmlib.experiments.results.learning import learning_frame, learning_summary
from mmlib.experiments.results.markdown import markdown_table
from mmlib.experiments.results.reference import REFERENCE_DIR, ReferenceRun, reference_runs
from mmlib.experiments.results.report import deviations_markdown
from mmlib.experiments.results.tables import table_by_name
from mmlib.presets import load_preset, preset_names

README = Path(__file__).resolve().parents[3] / "README.md"
_BLOCK = re.compile(r"(<!-- mmlib:(?P<kind>[\w-]+):(?P<run>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /mmlib -->)", re.S)


def _fmt(x) -> str:
    return "–" if x is None else f"{x:+.3f}".replace("-", "−")


def table3(run: ReferenceRun) -> str:
    """Table 3 of the run, each of its rows above the paper's (rows with no number left out)."""
    table = table_by_name(3).side_by_side(run.results)
    numbers = table[[c for c in table.columns if c != "seeds"]]
    return markdown_table(table[numbers.notna().any(axis=1)])


def findings(run: ReferenceRun) -> str:
    """Each finding's verdict and every clause's effect, 95% interval and verdict, as saved."""
    rows = []
    for name, f in run.findings.items():
        parts = []
        for c in f["clauses"]:
            low, high = c["ci95"]
            ci = "" if low is None else f" [{_fmt(low)}, {_fmt(high)}]"
            note = ""
            if c.get("not_learnt"):
                note = " (did not learn: " + "; ".join(c["not_learnt"]) + ")"
            elif c.get("not_converged"):
                note = " (not converged: " + ", ".join(c["not_converged"]) + ")"
            parts.append(f"{c['clause'].removeprefix(name + ' ')} {_fmt(c['value'])}{ci} {c['verdict']}{note}")
        rows.append({"finding": name, "verdict": f["verdict"], "clauses: effect [95% CI] verdict": "; ".join(parts)})
    return markdown_table(pd.DataFrame(rows).set_index("finding"))


def learning(run: ReferenceRun) -> str:
    """Whether each model of the run learnt and converged (from its training records)."""
    if not run.records:
        return f"Reference run `{run.name}` kept no training records (it was made before mmlib recorded them)."
    frame = learning_frame(run.records).drop(columns=["why", "precision"])
    return learning_summary(run.records) + "\n\n" + markdown_table(frame)


def provenance(run: ReferenceRun) -> str:
    """One line: where and when the run was made, and how long it took."""
    p = run.provenance
    return (f"Reference run `{run.name}`: preset `{p['preset']}`, {p['device']}, commit {p['commit'][:10]}, "
            f"{p['wall_time']}, {p['date']}.")


BLOCKS = {"table3": table3, "findings": findings, "learning": learning, "provenance": provenance}
#: Blocks made from the presets, not from a run (their marker names `presets`).
PRESET_BLOCKS = {"deviations": lambda: deviations_markdown([load_preset(n) for n in preset_names()])}


def render(text: str, folder: Path = REFERENCE_DIR) -> str:
    """`text` with every block regenerated from the reference runs in `folder`."""
    runs = reference_runs(folder)

    def fill(m: re.Match) -> str:
        kind, name = m.group("kind"), m.group("run")
        if kind in PRESET_BLOCKS and name == "presets":
            return m.group(1) + PRESET_BLOCKS[kind]().rstrip() + "\n" + m.group(5)
        if kind not in BLOCKS:
            raise MMLibError(f"README block {kind!r}: known blocks are {', '.join([*BLOCKS, *PRESET_BLOCKS])}", README)
        if name not in runs:
            raise MMLibError(f"README block {kind}:{name} names no shipped reference run", README)
        return m.group(1) + BLOCKS[kind](runs[name]).rstrip() + "\n" + m.group(5)

    return _BLOCK.sub(fill, text)


def drifted(text: str, folder: Path = REFERENCE_DIR) -> list[str]:
    """The blocks of `text` whose content differs from what the reference runs give."""
    fresh = {(m.group("kind"), m.group("run")): m.group("body") for m in _BLOCK.finditer(render(text, folder))}
    return [f"{k}:{r}" for m in _BLOCK.finditer(text) for k, r in [(m.group("kind"), m.group("run"))]
            if fresh[(k, r)] != m.group("body")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a block differs from the reference runs")
    args = parser.parse_args(argv)
    text = README.read_text()
    if args.check:
        stale = drifted(text)
        if stale:
            print(f"README blocks out of date: {', '.join(stale)}; run python -m mmlib.experiments.results.readme_blocks",
                  file=sys.stderr)
            return 1
        return 0
    atomic_write_text(README, render(text))
    print(f"README: {len(_BLOCK.findall(text))} blocks written from {REFERENCE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
