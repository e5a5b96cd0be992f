"""The node's configuration as the inference package's model settings.

Every model (loading, the device, the per-process cache, the analysis itself) lives in
``inference``; this is the one place that reads ``[models]`` and ``[gate]`` of the
configuration for it, so ``pacs_agent`` itself never imports torch.
"""

from __future__ import annotations

from pathlib import Path

from inference.model_cache import ModelSettings
from pacs_agent.config import Config, gate_thresholds


def model_settings(config: Config) -> ModelSettings:
    """``[models]`` and ``[gate]`` as plain settings (an empty value: the preset's own)."""
    m = config.models
    return ModelSettings(
        preset=m.preset,
        device=m.device,
        seg_weights=m.seg_weights or None,
        ef_weights=m.ef_weights or None,
        mean=tuple(m.mean) or None,
        std=tuple(m.std) or None,
        gate_thresholds=gate_thresholds(config.gate),
        ood_reference=Path(config.gate.ood_reference) if config.gate.ood_reference else None,
    )
