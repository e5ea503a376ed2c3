"""USAD: semantic-deviation-anchored multi-branch fusion for foreign objects on coal conveyor belts."""

from usad.core.config import load_config
from usad.belt.detector import DetectionResult, Detector

__all__ = ["Detector", "DetectionResult", "load_config"]
