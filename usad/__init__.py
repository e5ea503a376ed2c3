"""USAD: semantic-deviation-anchored multi-branch fusion for foreign objects on coal conveyor belts."""

from .config import load_config
from .detector import DetectionResult, Detector

__all__ = ["Detector", "DetectionResult", "load_config"]
