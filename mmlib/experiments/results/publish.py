"""Publishing a finished study as a reference run shipped with mmlib (mmlib/reference/<name>/): its
rows, findings, report, training records and executed notebooks, with provenance (commit,
device, preset, wall time). `mmlib reference` calls `save_reference`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import torch

from mmlib.engine.device import cpu_count
from mmlib.engine.precision import machine_name
from mmlib.errors import MMLibError
from mmlib.experiments.results.executed_notebooks import keep_executed_notebooks
from mmlib.experiments.results.availability import available_findings
from mmlib.experiments.results.findings import findings_json
from mmlib.experiments.results.learning import model_records
from mmlib.experiments.results.reference import REFERENCE_DIR
from mmlib.experiments.results.report import study_report


def describe_device() -> str:
    """The machine a run trained on: the GPU's name, else the CPU's model and cores."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} GPU)"
    return f"{machine_name(torch.device('cpu'))}, {cpu_count()} CPU cores"


def current_commit(repo: Path | None = None) -> str:
    """The git commit of the mmlib checkout (with '+changes' when its tree differs), or 'unknown'."""
    repo = repo or REFERENCE_DIR.parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def save_reference(study, name: str, wall_time: str, folder: Path = REFERENCE_DIR, **provenance) -> Path:
    """Write a finished study's rows, findings, report and executed notebooks as reference run `name`
    (replacing one of that name); returns its folder."""
    results = study.results()
    if results.empty:
        raise MMLibError("the study has no results to keep as a reference", study.out_dir)
    records = model_records(study)
    info = {"preset": study.preset.name, "commit": current_commit(), "device": describe_device(),
            "wall_time": wall_time, "date": pd.Timestamp.now().strftime("%Y-%m-%d"), **provenance}
    timings = Path(study.out_dir) / "timings.json"
    if timings.is_file():
        info["notebook_seconds"] = json.loads(timings.read_text())
    tmp = Path(folder) / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    results.to_csv(tmp / "results.csv.gz", index=False)
    sources = None if study.twins else study.sources  # a run on real data states its databases
    if sources:
        info["databases"] = {n: s.describe() for n, s in sources.items()}
    (tmp / "findings.json").write_text(json.dumps(findings_json(available_findings(results, study.unavailable())),
                                                  indent=2))
    (tmp / "provenance.json").write_text(json.dumps(info, indent=2))
    (tmp / "learning.json").write_text(json.dumps(records, indent=1))
    (tmp / "report.md").write_text(study_report(study.out_dir, study.preset, results,
                                                title=f"Reference run {name}", provenance=info, records=records,
                                                sources=sources))
    keep_executed_notebooks(Path(study.out_dir), tmp / "notebooks")
    final = Path(folder) / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


__all__ = ["describe_device", "current_commit", "save_reference"]
