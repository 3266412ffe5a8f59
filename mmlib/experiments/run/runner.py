"""`mmlib study`: run the numbered notebooks in order through papermill, then the findings.

Each executed notebook is kept in <out>/notebooks/ (05_explore too: its widgets' static snapshots
are what a reader of the executed copy sees). A notebook that finished with the same
parameters is not run again (a re-run resumes); models and caches are reused in any case.
A failing notebook stops the run, naming the notebook, the cell and the error.

The notebooks' training jobs go to the executor given (local processes, or Slurm through
submitit); the kernels see it through $MMLIB_EXECUTOR. The notebooks themselves run here, so the
study does not run under torchrun: its jobs get their GPUs from the executor instead.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import papermill as pm

from mmlib.atomic_files import atomic_write_json, read_json
from mmlib.data.identity import short_hash
from mmlib.data.sources import sources_line
from mmlib.engine import distributed
from mmlib.errors import MMLibError
from mmlib.experiments.results.report import write_report
from mmlib.experiments.run.executors import EXECUTOR_ENV, executor_from_config
from mmlib.experiments.run.study import Study

NOTEBOOKS = ("00_databases", "01_single_database_baselines", "02_joint_training",
             "03_new_modality_sets", "04_unseen_pathologies_and_finetuning", "05_explore", "99_findings")
#: ipykernel's own default backend: figures become outputs of the cell that drew them.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def notebooks_dir() -> Path:
    """The repository's notebooks/ folder (or $MMLIB_NOTEBOOKS)."""
    env = os.environ.get("MMLIB_NOTEBOOKS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "notebooks"


def run_study(out_dir: Path, preset: str = "quick", data_root: str | None = None, device: str = "auto",
              notebooks=None, extra_parameters: dict | None = None, progress: bool = True,
              executor: dict | str | None = None, databases=None, fill_with_twins=None) -> dict:
    """Run the study notebooks into `out_dir`; return {notebook: seconds}. 99_findings writes
    findings.json; at the end report.md gathers the tables beside the paper's and the findings.
    `executor`: a configuration (executors.executor_from_config) for the notebooks' training jobs.
    `databases`, `fill_with_twins`: as Study takes them; study.json keeps them, so the notebooks'
    kernels open the study with the same databases."""
    if distributed.launched():
        raise MMLibError("`mmlib study` runs its notebooks in kernels and does not run under torchrun; give its "
                         "training jobs GPUs with --executor local --processes N (one GPU each) or --executor slurm "
                         "--slurm-gpus N (torch.distributed inside each job), or train one model with "
                         "`torchrun ... -m mmlib joint`")
    config = {"executor": executor} if isinstance(executor, str) else executor
    executor_from_config(config, "the executor configuration")  # refused before anything runs
    # What the kernels inherit: the executor, and figures drawn inline whatever the shell sets
    # (MPLBACKEND=Agg, usual on servers, would leave every figure out of the executed notebooks).
    kernel_env = {"MPLBACKEND": INLINE_BACKEND, **({EXECUTOR_ENV: json.dumps(config)} if config is not None else {})}
    before = {key: os.environ.get(key) for key in kernel_env}
    os.environ.update(kernel_env)
    try:
        return _run_notebooks(out_dir, preset, data_root, device, notebooks, extra_parameters, progress,
                              {"databases_asked": databases, "fill_with_twins": fill_with_twins})
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_notebooks(out_dir, preset, data_root, device, notebooks, extra_parameters, progress, asked) -> dict:
    out_dir = Path(out_dir).resolve()
    study = Study(out_dir, preset, data_root=data_root, device=device, progress=progress, **asked)  # claims the folder
    print(f"[study] {sources_line(study.sources)}", flush=True)
    done_dir = out_dir / "notebooks"
    done_dir.mkdir(parents=True, exist_ok=True)
    params = {"preset": preset, "out_dir": str(out_dir), "data_root": data_root, "device": device,
              **(extra_parameters or {})}
    # A notebook runs again when its parameters or the preset's settings changed.
    # ... and when a database's source changed (a release found where a twin stood in).
    settings = short_hash(asdict(study.preset)) if study.twins else short_hash(
        {"preset": asdict(study.preset), "sources": {n: s.to_json() for n, s in study.sources.items()}})
    timings = {}
    for name in notebooks or NOTEBOOKS:
        src = notebooks_dir() / f"{name}.ipynb"
        if not src.is_file():
            raise MMLibError("notebook not found", src)
        dst = done_dir / f"{name}.ipynb"
        stamp = done_dir / f"{name}.done.json"
        done = read_json(stamp, {})  # a truncated stamp means: not done
        if done.get("parameters") == params and done.get("preset_settings") == settings and dst.is_file():
            timings[name] = done["seconds"]
            print(f"[study] {name}: done earlier with the same parameters, kept")
            continue
        stamp.unlink(missing_ok=True)
        print(f"[study] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(src), str(dst), parameters=params, cwd=str(src.parent),
                                progress_bar=progress, kernel_name="python3")
        except pm.PapermillExecutionError as exc:
            raise MMLibError(f"notebook {name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
                             f"(executed copy kept; finished results are kept and a re-run resumes)",
                             dst) from None
        timings[name] = time.perf_counter() - t0
        atomic_write_json(stamp, {"parameters": params, "preset_settings": settings, "seconds": timings[name]})
    atomic_write_json(out_dir / "timings.json", timings)
    write_report(study)
    return timings

