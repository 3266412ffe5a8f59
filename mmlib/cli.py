"""The `mmlib` command: synth, check, joint, study, reference, predict, export, docs.

Exit codes: 0 done; 2 refused input or, for `check`, problems found in the database; 3 `check`
could not run (no manifest, no root folder); 130 interrupted. Errors are one line naming the
file, without a traceback (MMLIB_DEBUG=1 shows it).

`mmlib joint` runs unchanged under torchrun (data-parallel, rank 0 writes and prints); `mmlib
study` hands its training jobs to an executor (--executor local | slurm) instead.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

from mmlib.atomic_files import clean_stale_temps
from mmlib.data.integrity import check_database
from mmlib.data.manifest import load_manifest
from mmlib.data.synth import make_twins
from mmlib.docs_site import build_site
from mmlib.engine import distributed
from mmlib.engine.bundle import export_bundle
from mmlib.engine.predict import (CaseRequest, GridWarning, load_predictor, parse_pairs, predict_database,
                                  predict_files)
from mmlib.errors import MMLibError
from mmlib.experiments.plan.specs import ARCHITECTURES
from mmlib.experiments.results.publish import save_reference
from mmlib.experiments.run.executors import SLURM_OPTIONS, executor_from_config, load_executor_config
from mmlib.experiments.run.joint import run_joint
from mmlib.experiments.run.runner import run_study
from mmlib.experiments.run.study import Study
from mmlib.out_folder import OutLock, os_message, prepare_out_dir

#: `mmlib check` exit code when the check could not run at all (no manifest, no root folder).
CHECK_COULD_NOT_RUN = 3


def _cmd_synth(args) -> int:
    out = prepare_out_dir(args.out)
    written = make_twins(out, preset=args.preset, seed=args.seed,
                         databases=args.databases or None, progress=not args.quiet)
    for name, path in written.items():
        print(f"{name:8s} {path}")
    return 0


def _check_failed_json(problem: str, file=None, database: str | None = None, root=None) -> None:
    """`check --json`'s answer when the check could not run: no cases, no problems, the error."""
    print(json.dumps({"database": database, "root": None if root is None else str(root), "cases": None,
                      "problems": [], "error": {"file": file, "problem": problem}}, indent=2))


def _check_error(args, exc: MMLibError, database: str | None = None, root=None) -> int:
    """Report that the check could not run: one line on stderr, and the JSON object with --json."""
    if args.json:
        _check_failed_json(exc.problem, exc.file, database, root)
    print(f"mmlib check: error: {exc}", file=sys.stderr)
    return CHECK_COULD_NOT_RUN


def _cmd_check(args) -> int:
    try:
        manifest = load_manifest(args.manifest)
    except MMLibError as exc:
        return _check_error(args, exc)
    root = None
    try:
        root = manifest.resolve_root(args.root)
        if not root.is_dir():
            raise MMLibError("release folder not found" if not root.exists() else "release folder is not a folder", root)
        os.listdir(root)
    except PermissionError:
        return _check_error(args, MMLibError("permission denied: cannot list the release folder", root),
                            manifest.name, root)
    except MMLibError as exc:
        return _check_error(args, exc, manifest.name, root)
    try:
        report = check_database(manifest, root, progress=not args.json)
    except (MMLibError, OSError) as exc:
        err = exc if isinstance(exc, MMLibError) else MMLibError(os_message(exc), getattr(exc, "filename", None))
        return _check_error(args, err, manifest.name, root)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"{manifest.name}: {report.cases} case(s) in {root}, {len(report.problems)} problem(s)")
        for p in report.problems:
            print(f"  {p.file}: {p.problem}")
    return 2 if report.problems else 0


@contextlib.contextmanager
def _claimed_out(path) -> Path:
    """The --out folder made writable and locked for this run (a second run is told who holds it);
    temporary files of a killed earlier run are removed first. Under torchrun rank 0 alone takes
    the lock (every rank gets its refusal) and lets it go once every rank is done."""
    held = []

    def claim() -> Path:
        out = prepare_out_dir(path)
        held.append(OutLock(out).acquire())
        clean_stale_temps(out)
        return out

    try:
        out = distributed.on_main(claim)
        yield out
        distributed.barrier()  # the other ranks are done with the folder
    finally:
        for lock in held:
            lock.release()


def _executor_config(args) -> dict | None:
    """The executor configuration of --executor-config, overridden by --executor and its options;
    None when none was given (then $MMLIB_EXECUTOR, else local processes)."""
    config = dict(load_executor_config(args.executor_config)) if args.executor_config else {}
    slurm = {key: getattr(args, f"slurm_{key}") for key in SLURM_OPTIONS if getattr(args, f"slurm_{key}") is not None}
    if args.executor:
        config["executor"] = args.executor
    if slurm and config.get("executor", "local") != "slurm":
        raise MMLibError(f"--slurm-{next(iter(slurm)).replace('_', '-')} needs --executor slurm")
    if args.processes is not None:
        if config.get("executor", "local") != "local":
            raise MMLibError("--processes is a setting of --executor local")
        config["processes"] = args.processes
    for key, value in slurm.items():
        config[SLURM_OPTIONS[key]] = value
    if not config:
        return None
    executor_from_config(config, args.executor_config)
    return config


def _cmd_joint(args) -> int:
    config = _executor_config(args)
    with distributed.session(args.device) as ranks:
        if ranks and config is not None:
            raise MMLibError("under torchrun the ranks train the model together; --executor and its options "
                             "are for running without torchrun")
        with _claimed_out(args.out) as out:
            summary = run_joint(out, preset=args.preset, data_root=args.data_root, seed=args.seed, arch=args.arch,
                                drop=not args.no_drop, device=args.device, steps=args.steps, executor=config,
                                databases=args.databases, fill_with_twins=args.fill_with_twins)
    if summary is not None:
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _cmd_study(args) -> int:
    if distributed.launched():
        raise MMLibError("`mmlib study` does not run under torchrun (its notebooks run in kernels); give its "
                         "training jobs GPUs with --executor local --processes N (one GPU each) or --executor "
                         "slurm --slurm-gpus N (torch.distributed inside each job)")
    config = _executor_config(args)
    with _claimed_out(args.out) as out:
        timings = run_study(out, preset=args.preset, data_root=args.data_root, device=args.device,
                            notebooks=args.notebooks or None, executor=config, databases=args.databases,
                            fill_with_twins=args.fill_with_twins)
    total = sum(timings.values())
    print(f"study done in {total / 60:.1f} min; results, figures, executed notebooks, findings.json and report.md in {args.out}")
    findings = Path(args.out) / "findings.json"
    if findings.is_file():
        for key, f in json.loads(findings.read_text()).get("findings", {}).items():
            if isinstance(f, dict) and "verdict" in f:
                counts = {}
                for c in f.get("clauses", []):
                    counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
                detail = ", ".join(f"{n} {v}" for v, n in counts.items())
                print(f"  {key}: {f['verdict']} ({detail})")
    return 0


def _cmd_reference(args) -> int:
    def save() -> Path:
        with OutLock(Path(args.study), what="the study folder"):
            return save_reference(Study.open(Path(args.study)), args.name, args.wall_time)

    with distributed.session("cpu"):  # under torchrun: rank 0 alone copies
        folder = distributed.on_main(save)
        if distributed.is_main():
            print(f"reference run {args.name} written to {folder}")
    return 0


def _cmd_predict(args) -> int:
    if bool(args.image) == bool(args.manifest):
        raise MMLibError("give the images of one case (--image MOD=FILE ...) or a database (--manifest NAME_OR_FILE)")
    channels = parse_pairs(args.channel, "--channel")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = load_predictor(args.checkpoint, args.device)
        if args.manifest:
            manifest = load_manifest(args.manifest)
            out = prepare_out_dir(args.out)
            rows = predict_database(predictor, manifest, manifest.resolve_root(args.root), out, channels, args.device)
            done = f"{manifest.name}: segmentations in {out}" + (f", {len(rows)} case(s) scored in metrics.csv and "
                                                                 f"summary.csv" if len(rows) else "")
        else:
            request = CaseRequest(parse_pairs(args.image, "--image"), Path(args.out), args.probabilities and
                                  Path(args.probabilities), args.brain_mask and Path(args.brain_mask), channels)
            done = f"segmentation written to {predict_files(predictor, request, args.device)}"
    for w in caught:  # ours in one line each, anything else as Python shows it
        if issubclass(w.category, GridWarning):
            print(f"mmlib predict: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(done)
    return 0


def _cmd_export(args) -> int:
    print(f"MONAI bundle written to {export_bundle(args.checkpoint, Path(args.bundle))}")
    return 0


def _cmd_docs(args) -> int:
    t0 = time.perf_counter()
    home = build_site(Path(args.out), *([Path(args.reference_dir)] if args.reference_dir else []))
    size = sum(f.stat().st_size for f in home.parent.rglob("*") if f.is_file())
    print(f"site written to {home.parent} in {time.perf_counter() - t0:.0f} s ({size / 2**20:.1f} MiB); open {home}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the synthetic twins of the seven databases")
    p.add_argument("--preset", default="quick")
    p.add_argument("--out", required=True, help="folder; each twin goes to OUT/<NAME>/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--databases", nargs="*", help="only these databases (default: all seven)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("check", help="integrity check of one database against its manifest",
                       description="Check one database against its manifest. Exit 0: clean; 2: problems "
                                   "found (each listed with its file); 3: the check could not run (manifest "
                                   "or root folder missing or unreadable). --json prints one JSON object in "
                                   "every case, with an 'error' entry when the check could not run.")
    p.add_argument("manifest", help="a manifest YAML, or a packaged database name such as BRATS")
    p.add_argument("--root", help="the release folder (default: $MMLIB_<NAME>_ROOT or $MMLIB_DATA_ROOT/<NAME>)")
    p.add_argument("--json", action="store_true", help="print one JSON object: cases, problems")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("joint", help="the study's joint model alone: train it on the training databases found "
                                     "(or find it in OUT) and evaluate it")
    p.add_argument("--preset", default="quick")
    p.add_argument("--out", default="runs/joint")
    p.add_argument("--data-root", help="folder holding the databases as NAME/ (default: $MMLIB_DATA_ROOT, else each "
                   "$MMLIB_<NAME>_ROOT, else synthetic twins made in OUT/data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="multiunet", choices=list(ARCHITECTURES))
    p.add_argument("--no-drop", action="store_true", help="train without random modality drop")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--steps", type=int, help="override the preset's number of training steps")
    _add_database_options(p)
    _add_executor_options(p)
    p.set_defaults(func=_cmd_joint)

    p = sub.add_parser("study", help="run the study notebooks (00-05, 99) through papermill")
    p.add_argument("--preset", default="quick")
    p.add_argument("--out", default="runs/study")
    p.add_argument("--data-root", help="folder holding the databases as NAME/ (default: $MMLIB_DATA_ROOT, else each "
                   "$MMLIB_<NAME>_ROOT, else synthetic twins made in OUT/data)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--notebooks", nargs="*", help="only these notebooks (names without .ipynb)")
    _add_database_options(p)
    _add_executor_options(p)
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser("reference", help="keep a finished study's results, findings and report as a shipped "
                                         "reference run (mmlib/reference/NAME), with its provenance")
    p.add_argument("study", help="the study folder")
    p.add_argument("--name", required=True, help="e.g. long-cpu, gpu-h200")
    p.add_argument("--wall-time", required=True, help="how long the run took from a fresh clone, e.g. '91 min'")
    p.set_defaults(func=_cmd_reference)

    p = sub.add_parser("predict", help="segment a case (or every case of a database) with an mmlib checkpoint or "
                                       "the authors' released one, on the input's grid")
    p.add_argument("--checkpoint", required=True, help="an mmlib checkpoint (final.pt) or the authors' .pth")
    p.add_argument("--image", action="append", metavar="MOD=FILE", help="one modality of the case (repeatable; "
                   "any subset of the model's; the first image's grid is the output's)")
    p.add_argument("--out", required=True, help="the segmentation .nii.gz (one case) or a folder (--manifest)")
    p.add_argument("--probabilities", metavar="FILE", help="also write the lesion probabilities (one case)")
    p.add_argument("--brain-mask", metavar="FILE", help="the brain for z-scoring (default: derived from the images)")
    p.add_argument("--channel", action="append", metavar="NEW=OLD", help="place a modality the model lacks on "
                   "the channel of one the case lacks (the paper's Appendix B), e.g. DWI=PD")
    p.add_argument("--manifest", help="segment every case of this database (a manifest YAML or a name such as ISLES)")
    p.add_argument("--root", help="with --manifest: the release folder (default: $MMLIB_<NAME>_ROOT ...)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="write a checkpoint as a MONAI bundle that `python -m monai.bundle run` "
                                      "executes (configs/metadata.json, configs/inference.json, models/model.pt)")
    p.add_argument("checkpoint", help="an mmlib checkpoint or the authors' .pth")
    p.add_argument("--bundle", required=True, help="the bundle folder to write")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("docs", help="build the study's static site (README, reference runs' reports and executed "
                                    "notebooks, architecture, API), offline, without training anything")
    p.add_argument("--out", default="site", help="the site's folder (replaced)")
    p.add_argument("--reference-dir", help="the reference runs to show (default: the shipped ones, mmlib/reference)")
    p.set_defaults(func=_cmd_docs)
    return parser


def _add_database_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("which databases (a missing one is stated in every table, never filled in silently)")
    g.add_argument("--databases", help="comma-separated: the databases to use, e.g. BRATS,ATLAS,MSSEG,WMH; a manifest "
                   "file (my/MYDB.yaml) adds your own database (default: every database whose release is found)")
    g.add_argument("--fill-with-twins", metavar="NAMES", help="comma-separated, e.g. TBI,TUMOR2: their synthetic twin "
                   "stands in for a missing release (a deviation stated under every table). Both options are "
                   "kept for the --out folder: a later run given neither uses the same; --fill-with-twins '' drops "
                   "the twins")


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the training jobs run (never part of a model's identity)")
    g.add_argument("--executor", choices=["local", "slurm"],
                   help="local: processes on this machine (default; one GPU each where there are several); "
                        "slurm: one Slurm job per model through submitit")
    g.add_argument("--executor-config", metavar="FILE", help="YAML file of executor settings (executor: slurm, "
                   "partition: ..., gpus_per_job: ..., time: ...); the options below override it")
    g.add_argument("--processes", type=int, help="local: models trained side by side (default: the preset's)")
    g.add_argument("--slurm-partition")
    g.add_argument("--slurm-gpus", type=int, help="GPUs per job, one rank each (default 1; 0: CPU jobs)")
    g.add_argument("--slurm-ranks", type=int, help="ranks per job on CPU jobs (default: one per GPU, else 1)")
    g.add_argument("--slurm-cpus", type=int, help="CPU cores per job")
    g.add_argument("--slurm-mem-gb", type=float, help="memory per node of a job, GB")
    g.add_argument("--slurm-time", help="time limit of a job, e.g. 24:00:00 (a job that reaches it is "
                   "requeued and resumes from its last checkpoint)")
    g.add_argument("--slurm-account")
    g.add_argument("--slurm-qos")
    g.add_argument("--slurm-nodes", type=int, help="nodes per job (default 1)")
    g.add_argument("--slurm-setup", action="append", metavar="LINE",
                   help="a shell line run before each job (repeatable), e.g. 'source .venv/bin/activate'")
    g.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"],
                   help="slurm (default); local: the same jobs as processes on this machine, to try the path")


def _parse(argv) -> argparse.Namespace | int:
    """Parsed arguments; for `check --json` with bad arguments, the JSON error and exit code 3."""
    argv = list(sys.argv[1:] if argv is None else argv)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        sys.stderr.write(err.getvalue())
        if exc.code not in (0, None) and argv[:1] == ["check"] and "--json" in argv:
            lines = err.getvalue().strip().splitlines()
            _check_failed_json(lines[-1] if lines else "invalid arguments")
            return CHECK_COULD_NOT_RUN
        raise
    sys.stderr.write(err.getvalue())
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    if isinstance(args, int):
        return args
    debug = bool(os.environ.get("MMLIB_DEBUG"))
    try:
        return args.func(args)
    except MMLibError as exc:
        if debug:
            raise
        if getattr(exc, "mmlib_other_rank", None) is None:  # under torchrun its own rank reports it
            print(f"mmlib {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user gave that cannot be used: permission, not a folder, full disk
        if debug:
            raise
        print(f"mmlib {args.command}: error: {os_message(exc)} (MMLIB_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmlib {args.command}: interrupted; finished results are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
