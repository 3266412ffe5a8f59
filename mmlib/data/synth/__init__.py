"""Synthetic twins of the paper's databases (see twins.py): `make_twins(out, preset, seed)`.

anatomy (MNI152 template -> subject) -> pathology (lesion models) -> contrast (modalities,
scanner) -> twins (layouts, writing); calibrate measures a twin's difficulty.
"""

from mmlib.data.synth.calibrate import best_threshold_dice
from mmlib.data.synth.twins import TwinCase, generate_case, main, make_twins, synth_case_counts

__all__ = ["make_twins", "synth_case_counts", "generate_case", "TwinCase", "main", "best_threshold_dice"]
