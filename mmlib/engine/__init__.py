"""Engine: training, checkpoints, inference, evaluation and the baselines without a network.

Depends on `mmlib.data` and `mmlib.models`; the experiments build on it.
"""

from mmlib.engine.baselines import outlier_baseline, threshold_baseline
from mmlib.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
from mmlib.engine.device import pick_device, seed_everything
from mmlib.engine.evaluate import (EvalSettings, SlidingWindow, evaluate_all_combinations, evaluate_cases, predict_case,
                                   predict_subsets)
from mmlib.engine.train import TrainResult, TrainSettings, TrainStep, train

__all__ = [
    "EvalSettings", "SlidingWindow", "TrainResult", "TrainSettings", "TrainStep", "evaluate_all_combinations",
    "evaluate_cases", "load_checkpoint", "load_model", "outlier_baseline", "pick_device", "predict_case", "predict_subsets", "save_checkpoint", "seed_everything",
    "threshold_baseline", "train",
]
