"""Where a study's independent training jobs run: here one after another, in local processes, or
as Slurm jobs through submitit.

`Study.run` hands each wave of ready jobs (parents before the models fine-tuned from them) to its
executor. Every job reopens the study folder in its own process (`Study.reopener`) and trains and
evaluates one `Job` (`Study.do_job`): this module knows a study by those calls only and never
imports it. Models are found again by identity, so a job resubmitted after a failure, a timeout or
a preemption resumes from its last.pt. The executor is never part of a model's identity.

Configuration, as a mapping (a YAML file, `mmlib study --executor ...` options, or JSON in
$MMLIB_EXECUTOR, which is how the notebooks `mmlib study` runs see it):

    executor: slurm          # inline | local | slurm
    partition: gpu           # slurm: where the jobs go ...
    gpus_per_job: 1          # ... one rank per GPU, under torch.distributed when more than one
    time: "24:00:00"         # a job's time limit; a job that reaches it is requeued and resumes
    cpus_per_job: 8, mem_gb: 64, account: ..., qos: ..., nodes: 1, setup: [shell lines], sbatch: {key: value}
    processes: 4             # local: models side by side (default: the preset's train_processes)
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import yaml
from tqdm.auto import tqdm

from mmlib.atomic_files import atomic_write_json, read_json
from mmlib.engine import distributed
from mmlib.engine.device import cpu_count
from mmlib.errors import MMLibError
from mmlib.experiments.plan.schedule import batch_per_database
from mmlib.experiments.plan.specs import Job

#: The environment variable holding the executor configuration (JSON) for notebook kernels.
EXECUTOR_ENV = "MMLIB_EXECUTOR"
KINDS = ("inline", "local", "slurm")
#: Seconds between two looks at the submitted jobs.
POLL_SECONDS = 5.0

try:  # a job resubmits itself on timeout or preemption when it is Checkpointable
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - submitit is a dependency; the local executors work without it
    _Checkpointable = object


def run_job(reopen: Callable, threads: int | None, job: Job) -> str | None:
    """Worker-process entry of LocalExecutor: reopen the study, train and evaluate one job; the
    problem as text if it fails."""
    # pick_device gives torch every core unless OMP_NUM_THREADS is set: set it, or the workers
    # would each take every core and slow one another down several times over.
    _use_threads(threads)
    try:
        reopen().do_job(job)
    except Exception as exc:  # reported in the parent, naming the model
        return f"{type(exc).__name__}: {exc}"
    return None


def _use_threads(threads: int | None) -> None:
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def _prepare(study, jobs: list[Job]) -> None:
    """Make and preprocess the jobs' data here, once, before any job reads it from the cache."""
    study.databases(sorted({d for j in jobs for e in j.evaluations for d in (*j.spec.databases, e.database)}
                           | {d for j in jobs for s in _lineage(j.spec) for d in s.databases}))


def _lineage(spec):
    while spec is not None:
        yield spec
        spec = spec.parent


def _longest_first(study, jobs: list[Job]) -> list[Job]:
    return sorted(jobs, key=lambda j: j.spec.cost((study.preset.steps or 1) * j.spec.step_fraction), reverse=True)


# -- here ------------------------------------------------------------------------------------------
@dataclass
class InlineExecutor:
    """Every job in this process, one after another (also what each rank does under torchrun)."""

    kind = "inline"

    def run(self, study, jobs: list[Job]) -> None:
        for job in jobs:
            study.do_job(job)


def worker_gpus(workers: int, visible: list[str]) -> list[str | None]:
    """The GPU each of `workers` local processes keeps (round robin over `visible`; None: no GPU)."""
    return [visible[k % len(visible)] if visible else None for k in range(workers)]


def _visible_gpus(device: str) -> list[str]:
    """The GPUs this process sees, when the study trains on CUDA and there are several."""
    if str(device).startswith("cpu") or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in env.split(",") if s.strip()] if env else []
    return ids[:torch.cuda.device_count()] or [str(k) for k in range(torch.cuda.device_count())]


def _pin_gpu(slots) -> None:
    """Worker initializer: keep one GPU (before CUDA starts in this process)."""
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


@dataclass
class LocalExecutor:
    """Jobs side by side in `processes` spawned processes (None: the study's), the CPU cores split
    between them; on a machine with several GPUs each process keeps one (round robin)."""

    processes: int | None = None
    kind = "local"

    def run(self, study, jobs: list[Job]) -> None:
        n = min(self.processes or study.processes or 1, len(jobs))
        if n <= 1:
            return InlineExecutor().run(study, jobs)
        threads = max(1, cpu_count() // n)
        _prepare(study, jobs)
        ctx = mp.get_context("spawn")
        slots = ctx.Queue()
        for gpu in worker_gpus(n, _visible_gpus(study.device)):
            slots.put(gpu)
        order = _longest_first(study, jobs)  # the pool ends together
        with ProcessPoolExecutor(n, mp_context=ctx, initializer=_pin_gpu, initargs=(slots,)) as pool:
            futures = {pool.submit(run_job, study.reopener(), threads, j): j for j in order}
            bar = tqdm(as_completed(futures), total=len(futures), disable=not study.progress,
                       desc=f"{len(order)} models in {n} processes", unit="model")
            failed = []  # the wave finishes: every other model is kept, every failure named
            for future in bar:
                problem = future.result()
                if problem:
                    failed.append((futures[future], problem))
        if len(failed) == 1:
            job, problem = failed[0]
            raise MMLibError(f"model {job.spec.name} (seed {job.spec.seed}) failed: {problem}", study.model_dir(job.spec))
        if failed:
            told = "; ".join(f"model {j.spec.name} (seed {j.spec.seed}, folder {study.model_dir(j.spec)}) failed: {p}"
                             for j, p in failed)
            raise MMLibError(f"{len(failed)} of {len(order)} models failed (the others are kept; a re-run trains "
                             f"the failed ones again): {told}")


# -- Slurm through submitit --------------------------------------------------------------------------
def parse_time(value) -> int:
    """A Slurm time limit ('MM', 'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS', or minutes) -> minutes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return max(1, int(round(value)))
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise MMLibError(f"time limit {value!r}: write HH:MM:SS, D-HH:MM:SS or minutes")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = int(days) * 1440 + int(a) * 60 + int(b or 0) + int(c or 0) / 60
    elif c is not None:  # HH:MM:SS
        minutes = int(a) * 60 + int(b) + int(c) / 60
    elif b is not None:  # MM:SS
        minutes = int(a) + int(b) / 60
    else:  # MM
        minutes = int(a)
    if minutes <= 0:
        raise MMLibError(f"time limit {value!r} must be positive")
    return max(1, int(-(-minutes // 1)))


@dataclass
class SubmititExecutor:
    """Each job a Slurm job through submitit (`cluster` 'local' runs the same path as processes on
    this machine, 'debug' in this process). A job gets min(ranks, its global batch) ranks: one per
    GPU (`gpus_per_job`), or `ranks_per_job` on CPUs; with more than one it trains under
    torch.distributed. Waits for every job; the failed ones are named with their logs."""

    partition: str | None = None
    gpus_per_job: int = 1
    ranks_per_job: int | None = None
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    time: str | int = "24:00:00"
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    setup: list[str] = field(default_factory=list)
    sbatch: dict = field(default_factory=dict)
    cluster: str = "slurm"
    max_requeues: int = 3
    poll_seconds: float = POLL_SECONDS
    kind = "slurm"

    def __post_init__(self):
        self.timeout_min = parse_time(self.time)
        for name in ("gpus_per_job", "nodes", "max_requeues"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "nodes" else 0):
                raise MMLibError(f"executor setting {name} must be a whole number, got {value!r}")
        if self.ranks_per_job is not None and not (isinstance(self.ranks_per_job, int) and self.ranks_per_job >= 1):
            raise MMLibError(f"executor setting ranks_per_job must be a positive whole number, got {self.ranks_per_job!r}")
        if self.cluster not in ("slurm", "local", "debug"):
            raise MMLibError(f"executor cluster must be slurm, local or debug, got {self.cluster!r}")
        self.setup = [self.setup] if isinstance(self.setup, str) else list(self.setup)
        if not isinstance(self.sbatch, dict):
            raise MMLibError(f"executor setting sbatch must be a mapping of sbatch options, got {self.sbatch!r}")

    def layout(self, global_batch: int) -> tuple[int, int]:
        """(nodes, ranks per node) of a job whose global batch holds `global_batch` samples: no more
        ranks than samples, and every node holding the same number."""
        nodes = max(1, min(self.nodes, global_batch))
        per_node = min(self.ranks_per_job or max(1, self.gpus_per_job), max(1, global_batch // nodes))
        return nodes, per_node

    def ranks(self, global_batch: int) -> int:
        """Ranks (tasks) of a job whose global batch holds `global_batch` samples."""
        nodes, per_node = self.layout(global_batch)
        return nodes * per_node

    def parameters(self, global_batch: int) -> dict:
        """submitit's parameters of a job whose global batch holds `global_batch` samples
        (AutoExecutor.update_parameters)."""
        nodes, per_node = self.layout(global_batch)
        gpus = min(self.gpus_per_job, per_node) if self.gpus_per_job else 0
        params = {"timeout_min": self.timeout_min, "nodes": nodes, "tasks_per_node": per_node,
                  "gpus_per_node": gpus,
                  "cpus_per_task": max(1, self.cpus_per_job // per_node) if self.cpus_per_job else None,
                  "mem_gb": self.mem_gb, "slurm_partition": self.partition, "slurm_account": self.account,
                  "slurm_qos": self.qos, "slurm_setup": self.setup or None,
                  "slurm_additional_parameters": dict(self.sbatch) or None,
                  # One rank failing ends the others, instead of leaving them waiting.
                  "slurm_srun_args": ["--kill-on-bad-exit=1"]}
        return {k: v for k, v in params.items() if v is not None}

    def _executor(self, folder: Path):
        try:
            import submitit  # optional: only the slurm executor needs it
        except ImportError:
            raise MMLibError("the slurm executor needs submitit: pip install submitit") from None
        try:
            return submitit.AutoExecutor(folder=folder, cluster=self.cluster, slurm_max_num_timeout=self.max_requeues)
        except RuntimeError as exc:  # no srun here
            raise MMLibError(f"the slurm executor cannot submit from this machine ({exc}); run mmlib on a "
                             f"Slurm login node, or try the path here with --slurm-cluster local", folder) from None

    def run(self, study, jobs: list[Job]) -> None:
        folder = study.out_dir / "slurm"
        _prepare(study, jobs)
        executor = self._executor(folder)
        batch = {}
        for job in jobs:
            n_db = len(job.spec.databases)
            batch[job] = batch_per_database(study.preset, n_db) * n_db
        n_ranks = {job: self.ranks(g) for job, g in batch.items()}
        threads = None
        if self.cluster == "local":  # the jobs' ranks share this machine's cores
            threads = max(1, cpu_count() // sum(n_ranks.values()))
        reopen = study.reopener()
        handles = []
        for job in _longest_first(study, jobs):
            marker = folder / "jobs" / f"{study.model_dir(job.spec).name}.json"
            handle = self._still_running(marker)
            if handle is None:
                executor.update_parameters(**self.parameters(batch[job]), name=f"mmlib-{job.spec.name}")
                handle = executor.submit(StudyJob(reopen, threads, job))
                atomic_write_json(marker, {"job_id": handle.job_id, "cluster": self.cluster, "tasks": n_ranks[job],
                                           "model": job.spec.name, "seed": job.spec.seed})
            if study.progress:
                print(f"[{self.cluster}] job {handle.job_id}: {job.spec.name} (seed {job.spec.seed}), "
                      f"{n_ranks[job]} rank(s); log {handle.paths.stderr}", flush=True)
            handles.append((job, handle))
        failures = []
        for job, handle in self._as_completed(handles):
            failure = job_failure(handle)
            if failure is not None:
                problem, log = failure
                failures.append((job, problem, log))
            elif study.progress:
                print(f"[{self.cluster}] job {handle.job_id} done: {job.spec.name} (seed {job.spec.seed})", flush=True)
        if failures:
            job, _, _ = failures[0]
            told = "; ".join(f"model {j.spec.name} (seed {j.spec.seed}, folder {study.model_dir(j.spec)}) failed: "
                             f"{problem}; log: {log}" for j, problem, log in failures)
            raise MMLibError(f"{len(failures)} of {len(handles)} jobs failed (the others' models are kept; a re-run "
                             f"resubmits the failed ones): {told}", study.model_dir(job.spec))

    def _still_running(self, marker: Path):
        """The Slurm job a marker names, if the queue still holds it (a re-run waits for it rather
        than submitting a twin that would train the same folder)."""
        info = read_json(marker, None)
        if self.cluster != "slurm" or not isinstance(info, dict) or info.get("cluster") != "slurm":
            return None  # local and debug jobs end with the process that started them
        try:
            import submitit  # optional: only the slurm executor needs it

            handle = submitit.SlurmJob(folder=marker.parents[1], job_id=str(info["job_id"]),
                                       tasks=list(range(int(info.get("tasks", 1)))))
            return None if handle.done(force_check=True) else handle
        except Exception:  # an unknown id, no sacct: submit again
            return None

    def _as_completed(self, handles):
        waiting = list(handles)
        while waiting:
            finished = [(j, h) for j, h in waiting if h.done()]
            for item in finished:
                waiting.remove(item)
                yield item
            if waiting and not finished:
                time.sleep(self.poll_seconds)


def job_failure(handle) -> tuple[str, Path] | None:
    """(what went wrong, the stderr log of the task it went wrong in) of a finished submitit job,
    None if every task returned."""
    for k in range(handle.num_tasks):
        task = handle.task(k)
        exc = task.exception()
        if exc is None:
            continue
        text = str(exc)
        trace = text.split("-" * 22)
        if len(trace) >= 3:  # FailedJobError: the traceback between two rulers; its last line says it
            lines = [ln.strip() for ln in trace[1].strip().splitlines() if ln.strip()]
            problem = lines[-1] if lines else text
        else:
            problem = f"the job ended without a result (state {getattr(task, 'state', 'unknown')})"
        return problem, task.paths.stderr
    return None


class StudyJob(_Checkpointable):
    """One Job of a study, as submitit runs it: reopens the study in the job's process (all its
    ranks under torch.distributed when it has several) and trains and evaluates the job's model.
    On a timeout or preemption submitit resubmits it as is, and it resumes from last.pt."""

    def __init__(self, reopen: Callable, threads: int | None, job: Job):
        self.reopen, self.threads, self.job = reopen, threads, job

    def __call__(self) -> str:
        import submitit  # optional: only the slurm executor needs it

        if submitit.JobEnvironment().num_tasks > 1:
            # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK of this task; the GPU is picked by
            # LOCAL_RANK among the visible ones (distributed.setup).
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        _use_threads(self.threads)
        try:
            study = self.reopen()
            study.do_job(self.job)
            return study.model_dir(self.job.spec).name
        finally:
            distributed.teardown()


# -- configuration -----------------------------------------------------------------------------------
#: Each executor's settings (its configuration's keys besides `executor`), one table per executor.
SETTINGS = {"inline": set(), "local": {"processes"},
            "slurm": {f.name for f in fields(SubmititExecutor)}}
#: The command line's --slurm-KEY options -> the slurm executor's settings.
SLURM_OPTIONS = {"partition": "partition", "gpus": "gpus_per_job", "ranks": "ranks_per_job", "cpus": "cpus_per_job",
                 "mem_gb": "mem_gb", "time": "time", "account": "account", "qos": "qos", "nodes": "nodes",
                 "setup": "setup", "cluster": "cluster"}


def executor_from_config(config, where: str | Path | None = None):
    """An executor from a mapping ({'executor': kind, setting: value}), a kind's name, an executor
    (returned as is) or None (the `local` default). `where` names the source in errors."""
    if config is None:
        return LocalExecutor()
    if isinstance(config, (InlineExecutor, LocalExecutor, SubmititExecutor)):
        return config
    if isinstance(config, str):
        config = {"executor": config}
    if not isinstance(config, dict):
        raise MMLibError(f"an executor configuration must be a mapping, got {type(config).__name__}", where)
    config = {k.replace("-", "_"): v for k, v in config.items() if v is not None}
    kind = config.pop("executor", "local")
    if kind not in KINDS:
        raise MMLibError(f"unknown executor {kind!r}; known: {', '.join(KINDS)}", where)
    unknown = sorted(set(config) - SETTINGS[kind])
    if unknown:
        raise MMLibError(f"unknown setting(s) for the {kind} executor: {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(SETTINGS[kind])) or 'none'}", where)
    try:
        if kind == "inline":
            return InlineExecutor()
        if kind == "local":
            processes = config.get("processes")
            if processes is not None and not (isinstance(processes, int) and processes >= 1):
                raise MMLibError(f"processes must be a positive whole number, got {processes!r}")
            return LocalExecutor(processes)
        return SubmititExecutor(**config)
    except MMLibError as exc:
        raise MMLibError(exc.problem, where) from None
    except TypeError as exc:
        raise MMLibError(f"bad executor setting: {exc}", where) from None


def load_executor_config(path: str | Path) -> dict:
    """The mapping in an executor configuration file (YAML or JSON)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MMLibError("executor configuration file not found", path) from None
    except (OSError, yaml.YAMLError) as exc:
        raise MMLibError(f"cannot read the executor configuration ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(raw, dict):
        raise MMLibError("an executor configuration must be a mapping (executor: slurm, partition: ..., ...)", path)
    executor_from_config(raw, path)  # refuse a bad file now, naming it
    return raw


def config_from_env() -> dict | None:
    """The configuration in $MMLIB_EXECUTOR (set by `mmlib study` for its notebooks), if any."""
    text = os.environ.get(EXECUTOR_ENV)
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError:
        raise MMLibError(f"${EXECUTOR_ENV} must hold the executor configuration as JSON, got {text[:80]!r}") from None
    executor_from_config(config, f"${EXECUTOR_ENV}")
    return config


__all__ = ["EXECUTOR_ENV", "SETTINGS", "SLURM_OPTIONS", "InlineExecutor", "LocalExecutor", "StudyJob", "SubmititExecutor",
           "config_from_env",
           "executor_from_config", "job_failure", "load_executor_config", "parse_time", "run_job", "worker_gpus"]
