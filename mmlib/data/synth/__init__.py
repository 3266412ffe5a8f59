"""Synthetic twins of the paper's databases (see twins.py): `make_twins(out, preset, seed)`,
`ensure_twins(out, preset, seed)` (make them unless the same ones are there; resumes a killed run).

anatomy (MNI152 template -> subject) -> pathology (lesion models) -> contrast (modalities,
scanner) -> twins (layouts, writing); calibrate measures a twin's difficulty.
"""

from mmlib.data.synth.calibrate import best_threshold_dice
from mmlib.data.synth.twins import TwinCase, ensure_twins, generate_case, main, make_twins, synth_case_counts

__all__ = ["make_twins", "ensure_twins", "synth_case_counts", "generate_case", "TwinCase", "main", "best_threshold_dice"]
