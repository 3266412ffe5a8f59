"""Engine: training, checkpoints, inference, evaluation and the threshold baseline.

Depends on `mmlib.data` and `mmlib.models`; the experiments build on it.
"""

from mmlib.engine.baselines import threshold_baseline
from mmlib.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
from mmlib.engine.device import pick_device, seed_everything
from mmlib.engine.evaluate import evaluate_all_combinations, evaluate_cases, predict_case
from mmlib.engine.train import TrainResult, train

__all__ = [
    "TrainResult", "evaluate_all_combinations", "evaluate_cases", "load_checkpoint", "load_model",
    "pick_device", "predict_case", "save_checkpoint", "seed_everything", "threshold_baseline", "train",
]
