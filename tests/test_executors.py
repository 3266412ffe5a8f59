"""Where a study's jobs run: the Slurm path through submitit's local executor (a failing job named
with its log, the others kept, a job under torch.distributed), the settings from options and
files, the configuration reaching the notebooks, and the refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mmlib.cli import main
from mmlib.engine.checkpoint import load_checkpoint
from mmlib.errors import MMLibError
from mmlib.experiments.plan.specs import Evaluation, Job, joint_spec, sd_spec
from mmlib.experiments.run.executors import (EXECUTOR_ENV, LocalExecutor, SubmititExecutor, config_from_env,
                                         executor_from_config, parse_time, worker_gpus)
from mmlib.experiments.run.study import Study

#: The Slurm path run as processes on this machine: two CPU ranks for a model that can split its batch.
LOCAL_SLURM = {"executor": "slurm", "cluster": "local", "gpus_per_job": 0, "ranks_per_job": 2, "time": 20,
               "poll_seconds": 1}


def _jobs(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*_submitted.pkl")}


def test_the_slurm_path_names_a_failed_job_with_its_log_and_keeps_the_others(tmp_path, monkeypatch):
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    study = Study(tmp_path, "smoke", device="cpu", progress=False, executor=LOCAL_SLURM)
    good = Job(sd_spec("ATLAS", "multiunet", False, 0, 1, 1.0), (Evaluation("ATLAS"),))
    joint = Job(joint_spec("multiunet", True, 0), (Evaluation("WMH"),))
    # The WMH model trains, then fails in its job: ATLAS cases have no FLAIR to give it.
    bad = Job(sd_spec("WMH", "multiunet", False, 0, 2, 1.0), (Evaluation("ATLAS", (("FLAIR",),)),))
    with pytest.raises(MMLibError) as err:
        study.run([bad, good, joint])
    message = str(err.value)
    assert "1 of 3 jobs failed" in message and "SD-WMH-multiunet-nodrop" in message and "has no FLAIR" in message
    log = Path(message.rsplit("log: ", 1)[1])
    assert log.is_file() and log.parent == tmp_path / "slurm" and "has no FLAIR" in log.read_text()
    assert err.value.file == str(study.model_dir(bad.spec))
    # The other jobs' models and rows are kept; the joint model trained on two ranks.
    for job in (good, joint):
        assert study.is_trained(job.spec) and study._evaluation_file(job.spec, job.evaluations[0]).is_file()
    assert load_checkpoint(study.model_dir(joint.spec) / "final.pt")["extra"]["world_size"] == 2
    assert load_checkpoint(study.model_dir(good.spec) / "final.pt")["extra"]["world_size"] == 1  # a batch of 1
    # A re-run submits nothing for what is done and reads the rows back.
    submitted = _jobs(tmp_path / "slurm")
    rows = Study(tmp_path, "smoke", device="cpu", progress=False, executor=LOCAL_SLURM).run([good, joint])
    assert _jobs(tmp_path / "slurm") == submitted and set(rows["database"]) == {"ATLAS", "WMH"}


def test_executor_settings_from_a_file_and_options_reach_the_sbatch_file(tmp_path, monkeypatch):
    import submitit

    from mmlib.cli import _executor_config, build_parser

    config = tmp_path / "cluster.yaml"
    config.write_text("executor: slurm\npartition: cpu\ntime: '2-00:00:00'\naccount: lab\n"
                      "setup: ['source .venv/bin/activate']\nsbatch: {constraint: a100}\n")
    args = build_parser().parse_args(["study", "--executor-config", str(config), "--slurm-partition", "gpu",
                                      "--slurm-gpus", "4", "--slurm-time", "24:00:00", "--slurm-cpus", "32"])
    executor = executor_from_config(_executor_config(args))
    assert isinstance(executor, SubmititExecutor) and executor.timeout_min == 24 * 60
    # A joint model (a global batch of 10) on 4 GPUs; a single-database one (2) on 2 of them.
    assert executor.ranks(10) == 4 and executor.ranks(2) == 2
    two_nodes = executor_from_config({"executor": "slurm", "gpus_per_job": 4, "nodes": 2})
    assert two_nodes.layout(10) == (2, 4) and two_nodes.layout(2) == (2, 1) and two_nodes.layout(1) == (1, 1)
    fake = tmp_path / "bin"  # submitit's Slurm executor wants srun on the PATH
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    slurm = submitit.AutoExecutor(folder=tmp_path / "slurm", cluster="slurm")
    slurm.update_parameters(**executor.parameters(10))
    sbatch = slurm._executor._make_submission_file_text("python -m job", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=4", "--ntasks-per-node=4", "--cpus-per-task=8",
                 "--time=1440", "--account=lab", "--constraint=a100", "source .venv/bin/activate",
                 "--kill-on-bad-exit=1"):
        assert line in sbatch, line


@pytest.mark.parametrize("argv, problem", [
    (["--slurm-gpus", "2"], "--slurm-gpus needs --executor slurm"),
    (["--executor", "slurm", "--slurm-time", "soon"], "time limit 'soon'"),
    (["--executor", "slurm", "--processes", "2"], "--processes is a setting of --executor local"),
])
def test_bad_executor_options_are_one_line_errors(tmp_path, capsys, argv, problem):
    assert main(["study", "--out", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_bad_executor_file_is_refused_naming_it(tmp_path, capsys):
    config = tmp_path / "cluster.yaml"
    config.write_text("executor: slurm\npartitoin: gpu\n")
    assert main(["study", "--out", str(tmp_path / "s"), "--executor-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "partitoin" in err


def test_the_notebooks_see_the_executor_and_it_is_no_part_of_a_models_identity(tmp_path, monkeypatch):
    from mmlib.experiments.run import runner

    seen = {}

    def notebooks(*args, **kwargs):  # where the kernels start: what they inherit
        seen["env"] = os.environ.get(EXECUTOR_ENV)
        return {}

    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    monkeypatch.setattr(runner, "_run_notebooks", notebooks)
    runner.run_study(tmp_path, "smoke", executor={"executor": "slurm", "partition": "gpu"})
    assert json.loads(seen["env"]) == {"executor": "slurm", "partition": "gpu"}
    assert EXECUTOR_ENV not in os.environ  # set for the notebooks only
    monkeypatch.setenv(EXECUTOR_ENV, seen["env"])
    assert config_from_env() == {"executor": "slurm", "partition": "gpu"}
    in_kernel = Study(tmp_path / "s", "smoke", progress=False)
    assert isinstance(in_kernel.executor, SubmititExecutor) and in_kernel.executor.partition == "gpu"
    monkeypatch.delenv(EXECUTOR_ENV)
    plain = Study(tmp_path / "s", "smoke", progress=False)
    assert isinstance(plain.executor, LocalExecutor)
    spec = joint_spec("multiunet", True, 0)
    assert in_kernel.model_dir(spec) == plain.model_dir(spec)


def test_mmlib_study_refuses_to_run_under_torchrun(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["study", "--out", str(tmp_path)]) == 2
    assert "does not run under torchrun" in capsys.readouterr().err
    assert not (tmp_path / "study.json").exists()


def test_local_workers_each_keep_one_gpu_in_turn():
    assert worker_gpus(4, ["2", "5"]) == ["2", "5", "2", "5"]
    assert worker_gpus(2, []) == [None, None]


@pytest.mark.parametrize("text, minutes", [("24:00:00", 1440), ("1-12", 2160), ("2-00:30:00", 2910),
                                           ("90", 90), (45, 45), ("30:30", 31)])
def test_slurm_time_limits_are_read_as_slurm_writes_them(text, minutes):
    assert parse_time(text) == minutes


def test_a_time_limit_that_is_not_one_is_refused():
    with pytest.raises(MMLibError, match="time limit"):
        parse_time("tomorrow")
    with pytest.raises(MMLibError, match="unknown executor 'kubernetes'"):
        executor_from_config({"executor": "kubernetes"})


@pytest.mark.parametrize("state, waited_for", [("RUNNING", True), ("PENDING", True), ("FAILED", False)])
def test_a_job_still_in_the_slurm_queue_is_waited_for_not_submitted_twice(tmp_path, monkeypatch, state, waited_for):
    from mmlib.atomic_files import atomic_write_json

    fake = tmp_path / "bin"  # sacct as Slurm answers it about job 4242
    fake.mkdir()
    (fake / "sacct").write_text(f"#!/bin/sh\necho 'JobID|State|NodeList'\necho '4242|{state}|node1'\n")
    (fake / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    marker = tmp_path / "slurm" / "jobs" / "MD-multiunet-drop-s0-x.json"
    atomic_write_json(marker, {"job_id": 4242, "cluster": "slurm", "tasks": 2})
    handle = executor_from_config({"executor": "slurm"})._still_running(marker)
    assert (handle is not None) == waited_for
    if waited_for:
        assert handle.job_id == "4242" and handle.num_tasks == 2
