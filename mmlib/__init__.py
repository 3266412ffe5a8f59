"""mmlib: joint learning from brain MRI databases with different diseases and modality sets.

A study package reproducing Xu et al., MIDL 2024. Layers, dependencies pointing one way:
``mmlib.data`` (manifests, readers, synthetic twins, preprocessing, loaders) ->
``mmlib.models`` -> ``mmlib.engine`` (train, evaluate, fine-tune) -> ``mmlib.experiments``.
"""

__version__ = "0.1.0"
