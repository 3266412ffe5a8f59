"""Data layer: modalities, manifests, release readers, synthetic twins, preprocessing, loaders.

Nothing here imports ``mmlib.models`` or ``mmlib.engine``.
"""
