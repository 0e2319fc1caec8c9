"""selfpose core: self-supervised 6D object pose estimation as a plain Python library (never imports ROS)."""
from __future__ import annotations

__version__ = "0.1.0"
