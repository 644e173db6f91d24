"""Recording model outputs on fixed probe sets during training."""

from freqlens.recording.probes import ROLES, ProbeSet
from freqlens.recording.recorder import Recorder
from freqlens.recording.schedule import Schedule
from freqlens.recording.spaces import register_input_space, unregister_input_space
from freqlens.recording.storage import Trajectory, TrajectoryWriter, load_trajectory

__all__ = ["ROLES", "ProbeSet", "Recorder", "Schedule", "Trajectory", "TrajectoryWriter", "load_trajectory",
           "register_input_space", "unregister_input_space"]
