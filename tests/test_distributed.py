"""Data-parallel training on CPU with gloo: two ranks against one process with the same global
batch (losses, weights after a resume with another number of ranks, evaluation rows), the
refusals, and `mmlib joint` under torchrun writing its results once."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmlib.data.cases import IGNORE, PreparedCase
from mmlib.data.loaders import ChannelMap, JointBatches
from mmlib.engine import distributed
from mmlib.engine.checkpoint import load_checkpoint
from mmlib.engine.evaluate import EvalSettings, evaluate_all_combinations
from mmlib.engine.train import TrainSettings, train
from mmlib.errors import MMLibError
from mmlib.models import MAFUNet, MultiUNet

CMAP = ChannelMap(("FLAIR", "T1", "T2"))
DATABASES = {"A": ("FLAIR", "T1"), "B": ("T1", "T2"), "C": ("FLAIR", "T1", "T2")}
K = 3  # steps before the resume, and after it


def _case(database: str, i: int, modalities) -> PreparedCase:
    """A 24^3 case whose lesion is bright in its first modality (IGNORE in a corner)."""
    rng = np.random.default_rng(100 * len(database) + i + ord(database[0]))
    shape = (24, 24, 24)
    label = np.zeros(shape, np.uint8)
    label[6:12, 8:14, 5:11] = 1
    label[-2:, -2:, -2:] = IGNORE
    image = rng.normal(size=(len(modalities), *shape)).astype(np.float32)
    image[0][label == 1] += 2.5
    return PreparedCase(database, f"{database}{i}", tuple(modalities), image, label, np.ones(shape, bool),
                        (1.0, 1.0, 1.0))


def _sets():
    return {db: [_case(db, i, mods) for i in range(3)] for db, mods in DATABASES.items()}


def _batches(seed: int = 5) -> JointBatches:
    # 3 databases x 1 crop: a global batch of 3, split 2 + 1 over two ranks.
    return JointBatches(_sets(), CMAP, crop=32, batch_per_database=1, drop=True, rotate_p=0.5,
                        lesion_crop_p=0.5, seed=seed)


def _model(arch: str = "multiunet") -> torch.nn.Module:
    """The network with dropout off (its masks are drawn per rank, so they cannot match)."""
    torch.manual_seed(0)
    if arch == "multiunet":
        return MultiUNet(len(CMAP), 1, 0.25, dropout=0.0)
    model = MAFUNet(len(CMAP), 1, 0.25)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def settings_and_rest(steps: int, kw: dict) -> tuple[TrainSettings, dict]:
    """train()'s settings from keyword arguments, and the arguments that are not settings."""
    names = {f.name for f in fields(TrainSettings)}
    return (TrainSettings(steps, **{k: v for k, v in kw.items() if k in names}),
            {k: v for k, v in kw.items() if k not in names})


def _train(out, steps, arch="multiunet", **kw):
    settings, rest = settings_and_rest(steps, {"lr": 1e-3, "lr_drop_step": 4, "device": "cpu", "progress": False,
                                               "seed": 7, "log_every": 2, **kw})
    model = _model(arch)
    result = train(model, rest.pop("batches", None) or _batches(), settings, out,
                   rest.pop("config", {"arch": arch, "width": 0.25, "dice_batch": False}), CMAP, **rest)
    return model, result


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, folder: str) -> None:
    """One rank of the spawned group: the runs the parent compares with one process."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    folder = Path(folder)
    report = {}
    with distributed.session("cpu"):
        # 1. K steps from scratch (the parent resumes them with one process to 2K).
        model, result = _train(folder / "ddp-first", K)
        report["losses"] = result.losses
        # 2. Resume a one-process run of K steps to 2K with two ranks.
        model, result = _train(folder / "one-first", 2 * K)
        report["resumed_losses"] = result.losses
        if rank == 0:
            torch.save(_weights(model), folder / "one-first-then-ddp.pt")
        # 3. MAFUnet leaves the encoder of a modality out when the share lacks it.
        report["mafunet_losses"] = _train(folder / "mafunet", 2, arch="mafunet")[1].losses
        # 4. Evaluation split across the ranks: the rows of one process, in its order.
        rows = evaluate_all_combinations(model.eval(), _sets()["C"] + _sets()["A"], CMAP,
                                         EvalSettings(32, 0.25, "cpu", progress=False, across_ranks=True))
        if rank == 0:
            rows.to_csv(folder / "rows.csv", index=False)
        # 5. Refusals, the same on every rank.
        refusals = []
        one_sample = JointBatches({"A": _sets()["A"]}, CMAP, crop=32, batch_per_database=1, drop=False,
                                  rotate_p=0.0, lesion_crop_p=0.0, seed=0)
        for kw in ({"config": {"arch": "multiunet", "width": 0.25, "dice_batch": True}}, {"batches": one_sample}):
            try:
                _train(folder / "refused", 1, **kw)
            except MMLibError as exc:
                refusals.append(str(exc))
        report["refusals"] = refusals
        # 6. Decisions and errors of rank 0 reach every rank.
        report["on_main"] = distributed.on_main(lambda: distributed.rank())
        try:
            distributed.on_main(lambda: (_ for _ in ()).throw(MMLibError("only rank 0 saw this")))
        except MMLibError as exc:
            report["shared_error"] = str(exc)
    (folder / f"rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The spawned group's folder, after one process trained K steps in one-first/."""
    folder = tmp_path_factory.mktemp("ddp")
    torch.set_num_threads(1)
    _train(folder / "one-first", K)
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), str(folder)), nprocs=2, join=True)
    return folder


def test_two_ranks_give_the_losses_of_one_process_with_the_same_global_batch(two_ranks, tmp_path):
    _, one = _train(tmp_path / "one", K)
    report = [json.loads((two_ranks / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert report[0]["losses"] == report[1]["losses"]  # every rank logs the global batch's loss
    diff = np.abs(np.array(report[0]["losses"]) - np.array(one.losses)).max()
    print(f"max |loss difference| over {K} steps, 2 ranks vs 1 process: {diff:.2e}")
    assert diff < 1e-5
    # The losses written by rank 0 alone are those losses.
    written = pd.read_csv(two_ranks / "ddp-first" / "losses.csv")
    assert np.allclose(written["loss"], report[0]["losses"]) and len(written) == K


def _normalised_biases(model) -> set[str]:
    """Biases of convs followed by an InstanceNorm: their gradient is zero in exact arithmetic, and
    Adam turns its rounding noise into steps of up to lr; no output depends on them."""
    return {f"{name}.conv.bias" for name, m in model.named_modules()
            if hasattr(m, "conv") and hasattr(m, "adn") and any(isinstance(c, torch.nn.InstanceNorm3d)
                                                                for c in m.adn.modules())}


def test_a_resume_with_another_number_of_ranks_gives_the_weights_of_one_run(two_ranks, tmp_path):
    reference, whole = _train(tmp_path / "one", 2 * K)
    # Two ranks for K steps, then one process to 2K; and one process for K, then two ranks to 2K.
    shutil.copytree(two_ranks / "ddp-first", tmp_path / "ddp-first")
    ddp_first, resumed = _train(tmp_path / "ddp-first", 2 * K)
    assert len(resumed.losses) == 2 * K and resumed.losses[:K] == json.loads(
        (two_ranks / "rank0.json").read_text())["losses"]  # resumed, not started again
    one_first = _model()
    one_first.load_state_dict(torch.load(two_ranks / "one-first-then-ddp.pt"))
    free = _normalised_biases(reference)
    assert free and all(k in reference.state_dict() for k in free)
    x = torch.randn(2, len(CMAP), 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.eval()(x)
        for name, model in (("2 ranks then 1", ddp_first), ("1 then 2 ranks", one_first)):
            diffs = {k: (v - reference.state_dict()[k]).abs().max().item() for k, v in model.state_dict().items()}
            weights = max(d for k, d in diffs.items() if k not in free)
            outputs = (model.eval()(x) - expected).abs().max().item()
            print(f"after {2 * K} steps, {name} vs 1 process: max |weight difference| {weights:.2e} "
                  f"({max(diffs.values()):.2e} with the biases before an InstanceNorm), outputs {outputs:.2e}")
            # Adam divides each step by the gradient's running scale, so a component whose gradient
            # is near zero at the first steps turns rounding into ~1e-5 (lr is 1e-3): a tenth of
            # one step is the bound, on the weights and on what the network computes.
            assert weights < 1e-4 and outputs < 1e-4, name
    report = json.loads((two_ranks / "rank0.json").read_text())
    assert np.abs(np.array(report["resumed_losses"]) - np.array(whole.losses)).max() < 1e-5


def test_mafunet_trains_on_two_ranks_though_a_share_may_lack_a_modality(two_ranks, tmp_path):
    shares = [[_batches().batch(step, r, 2)["present"].any(0) for r in (0, 1)] for step in (0, 1)]
    assert any((a ^ b).any() for a, b in shares)  # an encoder runs on one rank only
    _, one = _train(tmp_path / "one", 2, arch="mafunet")
    report = json.loads((two_ranks / "rank0.json").read_text())
    assert np.abs(np.array(report["mafunet_losses"]) - np.array(one.losses)).max() < 1e-5


def test_evaluation_split_across_ranks_gives_the_rows_of_one_process_in_its_order(two_ranks):
    model = _model()
    model.load_state_dict(torch.load(two_ranks / "one-first-then-ddp.pt"))
    one = evaluate_all_combinations(model.eval(), _sets()["C"] + _sets()["A"], CMAP,  # one process: no split
                                    EvalSettings(32, 0.25, "cpu", progress=False, across_ranks=True))
    split = pd.read_csv(two_ranks / "rows.csv", keep_default_na=False)
    assert list(split["case_id"]) == list(one["case_id"]) and list(split["subset"]) == list(one["subset"])
    assert np.allclose(split["dice"].astype(float), one["dice"].astype(float))


def test_rank_zeros_decisions_and_errors_reach_every_rank_and_refusals_are_clear(two_ranks):
    for r in (0, 1):
        report = json.loads((two_ranks / f"rank{r}.json").read_text())
        assert report["on_main"] == 0
        assert report["shared_error"] == "only rank 0 saw this"
        assert len(report["refusals"]) == 2
        assert "dice_batch" in report["refusals"][0] and "2 ranks, but a global batch of 1" in report["refusals"][1]


def test_one_process_takes_no_distributed_path():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.on_main(lambda: 42) == 42 and distributed.gather("x") == ["x"]
    with distributed.session("cpu") as on:
        assert on is False and not distributed.active()


def _torchrun(*argv, ranks=2, cwd=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           "-m", "mmlib", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "MPLBACKEND": "Agg"})


def test_mmlib_joint_under_torchrun_resumes_and_writes_its_results_once(tmp_path, monkeypatch):
    """A run stopped after 2 of 3 steps (its last.pt kept) is finished by two ranks; rank 0 alone
    writes the model, rows and summary; a second run finds it all."""
    from dataclasses import replace

    from mmlib.experiments.plan.schedule import schedule
    from mmlib.experiments.plan.specs import joint_spec
    from mmlib.experiments.run import study as study_module
    from mmlib.experiments.run.study import Study
    from mmlib.presets import load_preset

    out = tmp_path / "run"
    study = Study(out, load_preset("smoke").with_(steps=3), device="cpu", progress=False)
    spec = joint_spec("multiunet", True, 0)
    monkeypatch.setattr(study_module, "schedule", lambda *a, **k: replace(schedule(*a, **k), steps=2))
    study.train(spec)
    folder = study.model_dir(spec)
    (folder / "final.pt").unlink()
    (folder / "losses.csv").unlink()
    first_two = load_checkpoint(folder / "last.pt")["extra"]["losses"]
    assert len(first_two) == 2

    done = _torchrun("joint", "--preset", "smoke", "--device", "cpu", "--steps", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("dice_all_modalities") == 1  # rank 0 alone prints the summary
    losses = pd.read_csv(folder / "losses.csv")["loss"].tolist()
    assert len(losses) == 3 and losses[:2] == pytest.approx(first_two, abs=0)  # resumed, not retrained
    assert load_checkpoint(folder / "final.pt")["extra"]["world_size"] == 2
    rows = [pd.read_csv(p, keep_default_na=False) for p in sorted((out / "evaluations" / folder.name).glob("*.csv"))]
    assert len(rows) == 5
    for df in rows:  # each (case, subset) once: split across the ranks, gathered, written once
        assert len(df) > 0 and not df.duplicated(["case_id", "subset"]).any()
        expected = {c.case_id for c in study.databases([df["database"][0]])[df["database"][0]].test}
        assert set(df["case_id"]) == expected
    summary = pd.read_csv(out / "joint" / folder.name / "summary.csv")
    assert list(summary["database"]) == ["BRATS", "ATLAS", "MSSEG", "TBI", "WMH", "mean"]
    assert not (out / ".mmlib.lock").exists() and not list(out.rglob(".*.tmp*"))

    final = (folder / "final.pt").stat().st_mtime_ns
    again = _torchrun("joint", "--preset", "smoke", "--device", "cpu", "--steps", "3", "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (folder / "final.pt").stat().st_mtime_ns == final and again.stdout.count("dice_all_modalities") == 1
