"""One vocabulary of MRI modalities, with the aliases the public releases use."""

from __future__ import annotations

import re

from mmlib.errors import ModalityError

#: Canonical modality names, in mmlib's fixed order (used to sort channel maps).
MODALITIES: tuple[str, ...] = ("FLAIR", "T1", "T1c", "T2", "PD", "DWI", "SWI")

# Aliases are compared after lower-casing and dropping '-', '_', ' ' and '.'.
_ALIASES: dict[str, tuple[str, ...]] = {
    "FLAIR": ("flair", "mrflair", "t2flair", "flairpreprocessed"),
    "T1": ("t1", "t1w", "mrt1", "t1preprocessed", "mprage"),
    "T1c": ("t1c", "t1gd", "t1ce", "t1post", "gado", "t1contrast", "mrt1c", "gadopreprocessed"),
    "T2": ("t2", "t2w", "mrt2", "t2preprocessed"),
    "PD": ("pd", "dp", "pdw", "dppreprocessed", "pdpreprocessed"),
    "DWI": ("dwi", "mrdwi", "diffusion", "trace", "adc_b1000", "b1000"),
    "SWI": ("swi", "susceptibility", "t2star", "t2s"),
}
_LOOKUP = {alias: canon for canon, aliases in _ALIASES.items() for alias in aliases}


def _key(name: str) -> str:
    return re.sub(r"[-_ .]", "", name.strip().lower())


def canonical_modality(name: str) -> str:
    """Return the canonical name of a modality or alias ('t1gd' -> 'T1c'); raise ModalityError."""
    if not isinstance(name, str):
        raise ModalityError(f"modality must be a string, got {name!r}")
    canon = _LOOKUP.get(_key(name))
    if canon is None:
        known = ", ".join(MODALITIES)
        raise ModalityError(f"unknown modality {name!r}; known modalities: {known} (and their aliases)")
    return canon


def sort_modalities(names) -> tuple[str, ...]:
    """Canonicalise, de-duplicate and order modality names by mmlib's fixed order."""
    canon = {canonical_modality(n) for n in names}
    return tuple(m for m in MODALITIES if m in canon)


def subset_sort_key(subset, most_first: bool = False) -> tuple:
    """Sort key of a modality subset ('FLAIR+T1' or a tuple): by its number of modalities (fewest
    first, or most first), then by mmlib's modality order. Unknown names sort last."""
    names = subset.split("+") if isinstance(subset, str) else list(subset)
    rank = {m: i for i, m in enumerate(MODALITIES)}
    n = len(names)
    return (-n if most_first else n, [rank.get(m, len(MODALITIES)) for m in names])
