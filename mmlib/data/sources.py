"""Where each database of a study comes from: its release, its synthetic twin, or nowhere.

A user outside the paper's institutions holds the public releases (BRATS, ATLAS, MSSEG, WMH,
ISLES) but never TBI or Tumor 2 (Section 3: private). A study takes the databases it finds; a
missing one is stated ('not available (TBI is private)'), never silently left out, and its
synthetic twin stands in only when asked (`fill_with_twins`). With no data given at all every
database is its twin (the default study). Twins are written in the release layout, so a twin
folder passes for a release: what a database *is* is recorded from how the study got it, not
guessed from its files.

Your own database joins like a released one: `databases` may name a manifest YAML file; its
name (inside the file) is then a database of the study and its root is found as any other's.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmlib.data.manifest import (ALL_DATABASES, PRIVATE_DATABASES, TRAINING_DATABASES, DatabaseManifest,
                                 load_manifest, use_twins)
from mmlib.errors import MMLibError

RELEASE, TWIN, MISSING = "release", "twin", "missing"
#: Why every database is a twin in the default study (no data given at all).
NO_DATA_GIVEN = "no data given: every database is its twin"


@dataclass(frozen=True)
class Source:
    """One database of a study: `kind` release | twin | missing, its release folder (release),
    its manifest file when it is the user's own (None: packaged), and why (twin: who asked for
    it; missing: why it is not there)."""

    name: str
    kind: str
    root: str | None = None
    manifest: str | None = None
    why: str = ""

    @property
    def available(self) -> bool:
        return self.kind != MISSING

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The database's source in words."""
        if self.kind == RELEASE:
            own = f" (your manifest {self.manifest})" if self.manifest else ""
            return f"release at {self.root}{own}"
        if self.kind == TWIN:
            return f"synthetic twin ({self.why})"
        return f"not available ({self.why})"


def not_available(why: str) -> str:
    """The words every table cell and clause shows for a missing database."""
    return f"not available ({why})"


def private_reason(name: str) -> str:
    return f"{name} is private"


def parse_database_list(text) -> tuple[list[str], dict[str, str]]:
    """`--databases BRATS,ATLAS,my/MYDB.yaml` -> (names, {name: manifest file of a user database}).
    A list is taken as given; an entry ending in .yaml/.yml is a manifest file (its name is inside)."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    names, manifests = [], {}
    for item in items:
        if str(item).endswith((".yaml", ".yml")):
            manifest = load_manifest(item)
            names.append(manifest.name)
            manifests[manifest.name] = str(Path(item).resolve())
        else:
            names.append(str(item).upper())
    return names, manifests


@dataclass(frozen=True)
class DatabaseChoice:
    """What a user asked for: the databases (None: every one found), the manifest files of their own
    databases among them, and the databases whose twin may stand in for a missing release."""

    names: tuple[str, ...] | None = None
    manifests: dict = field(default_factory=dict)
    fill_with_twins: tuple[str, ...] = ()

    @classmethod
    def parse(cls, databases=None, fill_with_twins=None) -> "DatabaseChoice":
        """From `--databases` and `--fill-with-twins` (comma-separated text or lists; None: not given)."""
        names, manifests = (None, {}) if databases is None else parse_database_list(databases)
        return cls(None if names is None else tuple(names), manifests,
                   tuple(parse_database_list(fill_with_twins or ())[0]))

    def to_json(self) -> dict:
        """As given (a user database by its manifest file), so that `parse` reads it back."""
        names = None if self.names is None else [self.manifests.get(n, n) for n in self.names]
        return {"databases": names, "fill_with_twins": list(self.fill_with_twins)}

    def sources(self, data_root: Path | None = None) -> dict[str, "Source"]:
        return find_sources(self.names, data_root, self.fill_with_twins, self.manifests)


def study_manifest(name: str, manifests: dict[str, str] | None = None) -> DatabaseManifest:
    """A database's manifest: the user's file where one was given, else the packaged one."""
    return load_manifest((manifests or {}).get(name, name))


def find_sources(names=None, data_root: Path | None = None, fill_with_twins=(), manifests=None) -> dict[str, Source]:
    """Each database's source: the paper's seven and the user's own. `names` None: every one found;
    else only these (the others: left out; one of them missing is refused). `data_root`: a folder of
    <NAME>/; `fill_with_twins`: databases whose twin stands in where their release is not found (a
    found release always wins). With no data given at all, every packaged database is its twin."""
    manifests = dict(manifests or {})
    fill = {n.upper() for n in fill_with_twins or ()}
    chosen = None if names is None else list(names) + sorted(fill - set(names))  # a twin asked for is used
    every = list(ALL_DATABASES) + [n for n in (chosen or manifests) if n not in ALL_DATABASES]
    unknown = fill - set(ALL_DATABASES)
    if unknown:
        raise MMLibError(f"--fill-with-twins: no synthetic twin for {', '.join(sorted(unknown))} "
                         f"(twins exist for {', '.join(ALL_DATABASES)})")
    if data_root is None and use_twins(every) and set(every) == set(ALL_DATABASES):
        return {n: Source(n, TWIN, why=NO_DATA_GIVEN) if chosen is None or n in chosen
                else Source(n, MISSING, why="left out by --databases") for n in every}
    out = {}
    for name in every:
        if chosen is not None and name not in chosen:
            out[name] = Source(name, MISSING, why="left out by --databases")
            continue
        manifest = study_manifest(name, manifests)
        try:
            root = manifest.resolve_root(None if data_root is None else Path(data_root) / name)
        except MMLibError as exc:
            root, why = None, (private_reason(name) if name in PRIVATE_DATABASES else exc.problem)
        else:  # a folder named for this database that is not there is said; a private one unnamed is private
            named = data_root is None and os.environ.get(f"MMLIB_{name.upper()}_ROOT")
            why = "" if root.is_dir() else (private_reason(name) if name in PRIVATE_DATABASES and not named
                                            else f"no release folder at {root}")
        if not why:
            out[name] = Source(name, RELEASE, str(root.resolve()), manifests.get(name))
        elif name in fill:
            out[name] = Source(name, TWIN, why=f"asked with --fill-with-twins: {why}")
        else:
            out[name] = Source(name, MISSING, why=why)
    asked_missing = [s for n, s in out.items() if chosen is not None and n in chosen and not s.available]
    if asked_missing:
        raise MMLibError("--databases names " + "; ".join(f"{s.name}, which is not available ({s.why})"
                                                           for s in asked_missing)
                         + ": set its root folder, or --fill-with-twins for a paper's database")
    return out


def training_names(sources: dict[str, Source], manifests=None) -> list[str]:
    """The available training databases (not evaluation-only), the paper's order, then the user's."""
    present = [n for n, s in sources.items() if s.available and not study_manifest(n, manifests).evaluation_only]
    return [d for d in TRAINING_DATABASES if d in present] + sorted(set(present) - set(TRAINING_DATABASES))


def sources_line(sources: dict[str, Source]) -> str:
    """One line: which databases a study has, from where, and which are missing and why."""
    parts = [f"{n}: {s.describe()}" for n, s in sources.items()]
    return "databases: " + "; ".join(parts)


__all__ = ["RELEASE", "TWIN", "MISSING", "NO_DATA_GIVEN", "Source", "DatabaseChoice", "not_available", "private_reason",
           "parse_database_list",
           "study_manifest", "find_sources", "training_names", "sources_line"]
