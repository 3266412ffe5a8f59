"""The paper's findings F1-F6, judged clause by clause with 95% bootstrap confidence intervals.

Each finding is split into the clauses of the paper's sentence (`CLAUSES`: the words each tests,
the effect it measures, its threshold and why). A clause's effect is the mean over its groups
(architectures, databases or targets) of a signed sum of table cells. On our results every cell
is built from per-case values (mmlib.experiments.results.tables terms), so the effect is bootstrapped:
test cases resampled within each database and seeds resampled, the same draws for every model
(paired). Verdict per clause:

- holds: the whole 95% interval lies on the claimed side of the threshold;
- does not hold: the whole interval lies on the other side (or on the threshold);
- inconclusive: the interval straddles the threshold;
- untested: a cell it needs was not run, or a model it compares did not learn.

Preconditions: every model a clause compares must have finite weights (a model that diverged is
never evaluated) and must have learnt what the clause reads: its validation Dice on the database
more than 0.02 above the label-free floor on the same cases (mmlib.engine.convergence; for a
database it never trained on, its mean over its own databases). Where one did not, the clause is untested, with the
reason. Where one had not converged (its validation Dice still rising at the end), the clause
keeps its verdict and says so. A finding holds only when every clause holds. The paper's own numbers go through the same
clauses as point values (it publishes no per-case results), as a check of the reading.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmlib.atomic_files import atomic_write_json
from mmlib.data.manifest import TRAINING_DATABASES
from mmlib.engine.convergence import LEARNT_MARGIN, beats_floor
from mmlib.experiments.plan.specs import ARCHITECTURES, SMALL_DATABASES
from mmlib.experiments.results import tables as T
from mmlib.experiments.results.markdown import markdown_table
from mmlib.experiments.results.paper import paper_finding, paper_table

FINDINGS = ("F1", "F2", "F3", "F4", "F5", "F6")
#: Bootstrap replicates and the generator's seed (fixed: a verdict never changes between readings).
N_BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0
VERDICTS = ("holds", "inconclusive", "does not hold", "untested")

Cell = tuple[int, str, Any]  # (table, row, column)


@dataclass(frozen=True)
class Clause:
    """One testable clause of a finding: effect = mean over groups of sum(weight x cell)."""

    finding: str
    key: str
    words: str
    effect: str
    groups: tuple[tuple[str, tuple[tuple[float, Cell], ...]], ...]
    side: str
    threshold: float
    why: str
    paper_rows: dict = field(default_factory=dict)  # our row -> the paper's row that plays its part

    def claim(self) -> str:
        return f"{self.effect} {self.side} {self.threshold:g}"


def _diff(table: int, plus: str, minus: str, column: Any) -> tuple[tuple[float, Cell], ...]:
    return ((1.0, (table, plus, column)), (-1.0, (table, minus, column)))


def _clauses() -> list[Clause]:
    out: list[Clause] = []
    # F1 (Table 2): per architecture.
    for arch in ARCHITECTURES.values():
        name = arch.paper_name
        out.append(Clause(
            "F1", f"F1 drop shrinks the loss ({name})",
            "training with modality drop shrinks the loss of Dice when modalities are missing at test time, "
            "for every architecture",
            f"{name}: Dice change with missing modalities, drop minus no drop",
            ((name, _diff(2, "modality drop", "all modalities", (name, "dice_change"))),), ">", 0.0,
            "any shrinking counts; the paper's is 0.15-0.40 Dice"))
        out.append(Clause(
            "F1", f"F1 little cost ({name})", "at little cost with all modalities present",
            f"{name}: all-modality Dice, no drop minus drop",
            ((name, _diff(2, "all modalities", "modality drop", (name, "dice"))),), "<", 0.03,
            "'little': twice the paper's largest cost (0.015, LFUnet), a tenth of drop's gain"))
    # F2 (Table 3).
    md, sd = "MultiUnet-MD (drop)", "Unet-SD (all mods)"
    for db in TRAINING_DATABASES:
        out.append(Clause(
            "F2", f"F2 about as well ({db})",
            "one jointly trained model segments every training database about as well as the database-specific models",
            f"{db}: Dice of the joint model (drop) minus the single-database model (all modalities)",
            ((db, _diff(3, md, sd, db)),), ">", -0.05,
            "'about as well': within 0.05 Dice per database (the paper's differences are -0.002 to +0.017)"))
    out.append(Clause(
        "F2", "F2 average at least as good", "the average is at least as good",
        "mean over the five databases of joint (drop) minus single-database (all modalities) Dice",
        tuple((db, _diff(3, md, sd, db)) for db in TRAINING_DATABASES), ">", -0.01,
        "'at least as good' as non-inferiority within 0.01 Dice (the paper: +0.005)"))
    out.append(Clause(
        "F2", "F2 gains on the small databases", "gains landing on the small databases",
        f"mean over {' and '.join(SMALL_DATABASES)} (fewer than 100 training cases) of joint minus single-database Dice",
        tuple((db, _diff(3, md, sd, db)) for db in SMALL_DATABASES), ">", 0.0,
        "a gain is any positive difference (the paper: +0.017 MSSEG, +0.004 WMH)"))
    # F3 (Table 4).
    drop, nodrop, atlas = "all five (drop)", "all five (all mods)", "ATLAS only"
    far = "'far better': half the paper's smallest margin on T1 (0.295)"
    out += [
        Clause("F3", "F3 far better than the single-database model (ISLES T1)",
               "segments a seen pathology (stroke) in a new database ... far better than the single-database model",
               "ISLES (T1): joint (drop) minus ATLAS only", (("ISLES (T1)", _diff(4, drop, atlas, "ISLES (T1)")),),
               ">", 0.15, far),
        Clause("F3", "F3 far better than the joint model without drop (ISLES T1)",
               "far better ... than the joint model trained without drop",
               "ISLES (T1): joint (drop) minus joint (no drop)", (("ISLES (T1)", _diff(4, drop, nodrop, "ISLES (T1)")),),
               ">", 0.15, far),
        Clause("F3", "F3 far better from a set never seen with stroke (ISLES T1,T2)",
               "from modality sets it never saw stroke in, far better than the joint model trained without drop",
               "ISLES (T1,T2): joint (drop) minus joint (no drop)",
               (("ISLES (T1,T2)", _diff(4, drop, nodrop, "ISLES (T1,T2)")),), ">", 0.15, far),
        Clause("F3", "F3 better with FLAIR too (ISLES FLAIR,T1,T2)",
               "from modality sets it never saw stroke in, better than the joint model trained without drop",
               "ISLES (FLAIR,T1,T2): joint (drop) minus joint (no drop)",
               (("ISLES (FLAIR,T1,T2)", _diff(4, drop, nodrop, "ISLES (FLAIR,T1,T2)")),), ">", 0.0,
               "with FLAIR the comparator does not fail, so only 'better' is claimed (the paper: +0.088)"),
        Clause("F3", "F3 the single-database model fails on T1", "which fail on T1 alone",
               "ISLES (T1): Dice of ATLAS only", (("ISLES (T1)", ((1.0, (4, atlas, "ISLES (T1)")),)),), "<", 0.10,
               "'fail': below 0.10 Dice (the paper's failures: 0.046-0.053; its successes: 0.35 and up)"),
        Clause("F3", "F3 the joint model without drop fails on T1", "which fail on T1 alone",
               "ISLES (T1): Dice of the joint model without drop", (("ISLES (T1)", ((1.0, (4, nodrop, "ISLES (T1)")),)),),
               "<", 0.10, "'fail': below 0.10 Dice (the paper's failures: 0.046-0.053; its successes: 0.35 and up)"),
    ]
    # F4 (Table 4).
    out.append(Clause(
        "F4", "F4 better than the tumour-only model (Tumor 2 T1)",
        "the joint drop model segments tumour from T1 alone in a new database better than a tumour-only model "
        "trained with drop", "Tumor 2 (T1): joint (drop) minus BRATS only (drop)",
        (("Tumor 2 (T1)", _diff(4, drop, "BRATS only (drop)", "Tumor 2 (T1)")),), ">", 0.0,
        "'better': any positive difference (the paper: +0.051)"))
    # F5 (Table 5): per held-out database.
    zero, zero_all, upper = "Multi-Unet (drop), FLAIR or T1", "Multi-Unet (drop), all", "Unet-SD (upper bound), all"
    for db in paper_table(5).columns:
        out.append(Clause(
            "F5", f"F5 above chance ({db})", "a model that never saw a pathology still segments it clearly above chance",
            f"{db}: 0-shot Dice (FLAIR or T1) minus the label-free floor on the same cases and modality",
            ((db, _diff(5, zero, T.FLOOR_ROW, db)),), ">", 0.0,
            "'clearly': the whole interval above the floor; the floor is an intensity-outlier rule fixed in "
            "advance (the paper's floor: its unsupervised DDPM)",
            paper_rows={T.FLOOR_ROW: "DDPM (unsupervised), FLAIR or T1"}))
        out.append(Clause(
            "F5", f"F5 below the upper bound ({db})", "below the supervised upper bound",
            f"{db}: single-database model (all modalities) minus 0-shot, all modalities",
            ((db, _diff(5, upper, zero_all, db)),), ">", 0.0, "'below': any positive gap"))
    # F6 (Table 6): means over the five targets.
    targets = tuple(paper_table(6).index)

    def per_target(pairs) -> tuple:
        return tuple((t, tuple((w, (6, t, col)) for w, col in pairs)) for t in targets)

    out += [
        Clause("F6", "F6 fine-tuning beats scratch, limited labels",
               "starting from the jointly trained model beats training from scratch on a new pathology",
               "mean over the five targets of fine-tuned minus scratch Dice, limited labels",
               per_target([(1, "limited finetune"), (-1, "limited scratch")]), ">", 0.0,
               "'beats': any positive mean gain (the paper: +0.050)"),
        Clause("F6", "F6 fine-tuning beats scratch, all labels",
               "starting from the jointly trained model beats training from scratch on a new pathology",
               "mean over the five targets of fine-tuned minus scratch Dice, all labels",
               per_target([(1, "all finetune"), (-1, "all scratch")]), ">", 0.0,
               "'beats': any positive mean gain (the paper: +0.012)"),
        Clause("F6", "F6 most clearly with limited labels", "most clearly with limited labels",
               "mean over targets of the fine-tuning gain with limited labels minus the gain with all labels",
               per_target([(1, "limited finetune"), (-1, "limited scratch"), (-1, "all finetune"), (1, "all scratch")]),
               ">", 0.0, "'most clearly': a larger gain (the paper: +0.039)"),
        Clause("F6", "F6 progressive nets add a little more", "progressive nets add a little more",
               "mean over targets and label budgets of progressive minus fine-tuned Dice",
               per_target([(0.5, "limited progressive"), (-0.5, "limited finetune"), (0.5, "all progressive"),
                           (-0.5, "all finetune")]), ">", 0.0,
               "'add more': a positive mean gain, a tie does not count (the paper: +0.009)"),
    ]
    return out


#: Every clause of F1-F6: the paper's words, the effect measured, threshold and why.
CLAUSES: tuple[Clause, ...] = tuple(_clauses())


# -- measuring a clause -----------------------------------------------------------------------------
@dataclass
class Judgement:
    """A clause measured: effect, 95% interval, verdict, and what could not be measured."""

    clause: Clause
    effect: float | None
    low: float | None
    high: float | None
    verdict: str
    groups_measured: int
    missing: list[str]
    seeds: int = 0
    cases: int = 0
    not_learnt: list[str] = field(default_factory=list)  # failed preconditions: untested
    not_converged: list[str] = field(default_factory=list)  # models still improving: said, verdict kept
    unknown: list[str] = field(default_factory=list)  # models without a learning record

    def to_json(self) -> dict:
        c = self.clause
        return {"clause": c.key, "words": c.words, "effect": c.effect, "side": c.side, "threshold": c.threshold,
                "why": c.why, "value": _num(self.effect), "ci95": [_num(self.low), _num(self.high)],
                "verdict": self.verdict, "groups": f"{self.groups_measured} of {len(c.groups)}",
                "missing": self.missing, "seeds": self.seeds, "cases": self.cases,
                "not_learnt": self.not_learnt, "not_converged": self.not_converged,
                "learning_unknown": self.unknown}

    def notes(self) -> str:
        """The preconditions that failed, and the models that had not converged, in words."""
        out = []
        if self.not_learnt:
            out.append("untested: did not learn: " + "; ".join(self.not_learnt))
        if self.not_converged:
            out.append("not converged: " + ", ".join(self.not_converged))
        if self.unknown:
            out.append("convergence not recorded: " + ", ".join(self.unknown))
        return "; ".join(out)


# -- did the compared models learn? ----------------------------------------------------------------------
@dataclass(frozen=True)
class ModelState:
    """What the rows say of one model on one database: learnt (None: not recorded), converged."""

    learnt: bool | None
    converged: bool | None
    why: str


def _flag(value) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().lower()
    return True if text in ("true", "1") else False if text in ("false", "0") else None


def model_states(df: pd.DataFrame) -> dict[tuple[str, str], ModelState]:
    """Per (model_id, database) of tidy rows: whether the model learnt what its rows there need and
    whether it converged, from the learning columns its rows carry (mmlib.experiments.run.study).
    Rows without them (runs made before mmlib recorded learning) count as not learnt where the
    model predicts no lesion at all (Dice 0 on every row), else as not recorded."""
    if df.empty or "model_id" not in df:
        return {}
    rows = df[~df["model_id"].astype(str).str.startswith("rule-") & (df["training"] != "rule")]
    silent = rows.groupby("model_id")["dice"].apply(lambda d: bool((d.fillna(0) == 0).all()))
    cols = [c for c in ("learnt", "converged", "val_dice", "val_floor") if c in rows]
    first = rows.groupby(["model_id", "database"], sort=False)[cols].first() if cols else None
    # A model as a whole (for a database it never trained on): its own databases' numbers, averaged.
    whole: dict[str, bool] = {}
    if first is not None and {"val_dice", "val_floor"} <= set(cols):
        pairs = first[[_finite(d) and _finite(f) for d, f in zip(first["val_dice"], first["val_floor"])]]
        for model, part in pairs.groupby(level="model_id"):
            whole[model] = beats_floor(part["val_dice"].astype(float).mean(), part["val_floor"].astype(float).mean())
    states = {}
    for model, db in rows.groupby(["model_id", "database"], sort=False).groups:
        rec = first.loc[(model, db)] if first is not None else {}
        learnt, converged = _flag(rec.get("learnt")), _flag(rec.get("converged"))
        if _finite(rec.get("val_dice")) and _finite(rec.get("val_floor")):
            learnt = beats_floor(rec.get("val_dice"), rec.get("val_floor"))  # the rule as it stands now
        elif model in whole:
            learnt = whole[model]
        if learnt is None and silent.get(model, False):
            learnt, why = False, "predicts no lesion on any test case"
        elif learnt is False:
            dice, floor = rec.get("val_dice"), rec.get("val_floor")
            why = (f"validation Dice {float(dice):.3f} not more than {LEARNT_MARGIN} above the label-free floor "
                   f"{float(floor):.3f}" if _finite(dice) and _finite(floor) else
                   "validation Dice not above the label-free floor")
        else:
            why = ""
        states[(str(model), str(db))] = ModelState(learnt, converged, why)
    return states


def _finite(x) -> bool:
    try:
        return bool(np.isfinite(float(x)))
    except (TypeError, ValueError):
        return False


def _model_label(df: pd.DataFrame, model_id: str) -> str:
    names = df.loc[df["model_id"] == model_id, "model"] if "model_id" in df else pd.Series(dtype=object)
    return str(names.iloc[0]) if len(names) else model_id


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def verdict(side: str, threshold: float, low: float, high: float) -> str:
    """holds / does not hold / inconclusive for an interval [low, high] against `side threshold`."""
    if side == ">":
        return "holds" if low > threshold else "does not hold" if high <= threshold else "inconclusive"
    return "holds" if high < threshold else "does not hold" if low >= threshold else "inconclusive"


def _cell_name(cell: Cell) -> str:
    table, row, col = cell
    col = " ".join(col) if isinstance(col, tuple) else col
    return f"Table {table} [{row} | {col}]"


def _bootstrap(groups: list[list[tuple[float, list[T.Term]]]], rng: np.random.Generator, n: int
               ) -> tuple[float, np.ndarray, int, int]:
    """Point effect and `n` bootstrap replicates of mean_g sum_t w x term, resampling each
    database's cases and the seeds (paired across terms)."""
    terms = [(weight * t.weight / len(groups), t) for g in groups for weight, ts in g for t in ts]
    seeds = sorted({s for _, t in terms for s in t.values.index.get_level_values("seed")})
    cases: dict[str, list] = {}
    for _, t in terms:
        cases.setdefault(t.database, set()).update(t.values.index.get_level_values("case_id"))
    cases = {db: sorted(c) for db, c in cases.items()}
    seed_draws = rng.integers(0, len(seeds), size=(n, len(seeds)))
    case_draws = {db: rng.integers(0, len(c), size=(n, len(c))) for db, c in cases.items()}
    point, reps = 0.0, np.zeros(n)
    for w, t in terms:
        m = t.values.unstack("case_id").reindex(index=seeds, columns=cases[t.database]).to_numpy(float)
        point += w * np.nanmean(np.nanmean(m, axis=1))
        draw = m[seed_draws[:, :, None], case_draws[t.database][:, None, :]]
        with np.errstate(all="ignore"), _quiet():
            reps += w * np.nanmean(np.nanmean(draw, axis=2), axis=1)
    return point, reps, len(seeds), sum(len(c) for c in cases.values())


class _quiet:
    """Silence numpy's 'mean of empty slice' warning (an all-missing draw gives NaN, dropped later)."""

    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def judge(clause: Clause, results: pd.DataFrame, n_bootstrap: int = N_BOOTSTRAP,
          states: dict[tuple[str, str], ModelState] | None = None) -> Judgement:
    """Measure `clause` on tidy `results`, with its 95% bootstrap interval and verdict; untested
    where a model it compares did not learn (`states`: model_states(results), computed if None)."""
    states = model_states(results) if states is None else states
    measured, missing = [], []
    for name, parts in clause.groups:
        found = [(w, T.cell_terms(t, r, c, results)) for w, (t, r, c) in parts]
        lacking = [_cell_name(cell) for (w, cell), (_, terms) in zip(parts, found) if not terms]
        if lacking:
            missing += lacking
        else:
            measured.append(found)
    if not measured:
        return Judgement(clause, None, None, None, "untested", 0, missing)
    compared = sorted({(m, t.database) for g in measured for _, ts in g for t in ts for m in t.models})
    not_learnt, not_converged, unknown = [], [], []
    for model, db in compared:
        state = states.get((model, db))
        if state is None:
            continue
        label = _model_label(results, model)
        if state.learnt is False:
            not_learnt.append(f"{label} on {db} ({state.why})")
        if state.converged is False and label not in not_converged:
            not_converged.append(label)
        if state.converged is None and label not in unknown:
            unknown.append(label)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    point, reps, n_seeds, n_cases = _bootstrap(measured, rng, n_bootstrap)
    reps = reps[np.isfinite(reps)]
    low, high = (np.percentile(reps, [2.5, 97.5]) if reps.size else (point, point))
    word = "untested" if missing or not_learnt else verdict(clause.side, clause.threshold, float(low), float(high))
    return Judgement(clause, float(point), float(low), float(high), word, len(measured), missing, n_seeds, n_cases,
                     not_learnt, not_converged, unknown)


def judge_paper(clause: Clause) -> Judgement:
    """The clause on the paper's published numbers: a point value, no interval."""
    total, missing = 0.0, []
    for _, parts in clause.groups:
        for w, (table, row, col) in parts:
            value = paper_table(table).loc[clause.paper_rows.get(row, row), col]
            if pd.isna(value):
                missing.append(_cell_name((table, row, col)))
            total += w * float(value) / len(clause.groups)
    if missing:
        return Judgement(clause, None, None, None, "untested", 0, missing)
    word = verdict(clause.side, clause.threshold, total, total)
    return Judgement(clause, total, total, total, word, len(clause.groups), [])


def finding_verdict(judgements: list[Judgement]) -> str:
    """A finding holds only when every clause holds; one that does not hold decides against it."""
    words = [j.verdict for j in judgements]
    for word in ("does not hold", "inconclusive", "untested"):
        if word in words:
            return word
    return "holds"


def evaluate_findings(results: pd.DataFrame, n_bootstrap: int = N_BOOTSTRAP) -> dict[str, dict[str, Any]]:
    """Every finding judged on tidy `results`: {F: {finding, verdict, clauses: [Judgement], paper: [...]}}."""
    df = T.tidy_results(results) if not results.empty else T.tidy_results(
        pd.DataFrame(columns=["database", "case_id", "subset", "seed", "dice"]))
    out, states = {}, model_states(df)
    for name in FINDINGS:
        clauses = [c for c in CLAUSES if c.finding == name]
        ours = [judge(c, df, n_bootstrap, states) for c in clauses]
        paper = [judge_paper(c) for c in clauses]
        out[name] = {"finding": paper_finding(name), "verdict": finding_verdict(ours), "clauses": ours,
                     "paper_verdict": finding_verdict(paper), "paper": paper}
    return out


def findings_json(findings: dict[str, dict[str, Any]]) -> dict:
    return {"bootstrap": {"replicates": N_BOOTSTRAP, "seed": BOOTSTRAP_SEED, "interval": 0.95},
            "findings": {name: {"finding": f["finding"], "verdict": f["verdict"], "paper_verdict": f["paper_verdict"],
                                "clauses": [j.to_json() for j in f["clauses"]],
                                "paper": [j.to_json() for j in f["paper"]]}
                         for name, f in findings.items()}}


def write_findings(results: pd.DataFrame, path: str | Path) -> Path:
    """Judge the findings and write them as JSON atomically; `path` is a .json file or a folder
    (then <path>/findings.json). Returns the file written."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / "findings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, findings_json(evaluate_findings(results)))


def _fmt(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:+.3f}"


def clauses_frame(findings: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per clause: finding, clause, effect, 95% CI, claim, verdict, the paper's value."""
    rows = []
    for name, f in findings.items():
        for ours, paper in zip(f["clauses"], f["paper"]):
            c = ours.clause
            ci = "–" if ours.low is None else f"[{ours.low:+.3f}, {ours.high:+.3f}]"
            extra = f" (over {ours.groups_measured} of {len(c.groups)})" if ours.missing and ours.groups_measured else ""
            rows.append({"finding": name, "clause": c.key, "effect": _fmt(ours.effect) + extra, "95% CI": ci,
                         "claim": f"{c.side} {c.threshold:g}", "verdict": ours.verdict,
                         "models": ours.notes() or "learnt", "paper": _fmt(paper.effect),
                         "paper verdict": paper.verdict})
    return pd.DataFrame(rows)


def findings_markdown(findings: dict[str, dict[str, Any]]) -> str:
    """A Markdown section per finding: statement, verdict, and each clause with effect and CI."""
    lines = []
    for name, f in findings.items():
        rows = []
        for ours, paper in zip(f["clauses"], f["paper"]):
            c = ours.clause
            ci = "–" if ours.low is None else f"[{ours.low:+.3f}, {ours.high:+.3f}]"
            note = ""
            if ours.missing:
                shown = ", ".join(ours.missing[:3]) + (" …" if len(ours.missing) > 3 else "")
                note = f" (measured on {ours.groups_measured} of {len(c.groups)}; not run: {shown})"
            if ours.notes():
                note += f" ({ours.notes()})"
            rows.append({"clause": c.key, "the paper's words": c.words, "effect": f"{c.effect}: {_fmt(ours.effect)}",
                         "95% CI": ci, "claim": f"{c.side} {c.threshold:g}", "verdict": f"{ours.verdict}{note}",
                         "paper": _fmt(paper.effect), "why this threshold": c.why})
        lines += [f"### {name}: {f['verdict']} (the paper's own numbers: {f['paper_verdict']})", "", f["finding"], "",
                  _one_line_table(rows, "clause"), ""]
    return "\n".join(lines)


def clauses_markdown() -> str:
    """The table of clauses itself: finding, the paper's words, the effect, threshold and why."""
    return _one_line_table([{"finding": c.finding, "clause": c.key, "the paper's words": c.words, "effect": c.effect,
                             "claim": f"{c.side} {c.threshold:g}", "why this threshold": c.why} for c in CLAUSES],
                           "finding")


def _one_line_table(rows: list[dict], first: str) -> str:
    """A pipe table of text cells, each on one line."""
    frame = pd.DataFrame(rows).replace("\n", " ", regex=True)
    return markdown_table(frame.set_index(first))


__all__ = ["FINDINGS", "CLAUSES", "Clause", "Judgement", "ModelState", "N_BOOTSTRAP", "model_states", "verdict",
           "judge", "judge_paper", "finding_verdict", "evaluate_findings", "findings_json", "write_findings", "clauses_frame",
           "findings_markdown", "clauses_markdown"]
