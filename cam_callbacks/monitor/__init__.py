"""The stateful parts of watching a training run, each with its own ``state_dict``: the alarm, the cost budget,
the history of maps (drift)."""

from cam_callbacks.monitor.alarm import AlarmHit, AlarmRule, format_alarm
from cam_callbacks.monitor.budget import CostBudget

__all__ = ["AlarmHit", "AlarmRule", "CostBudget", "format_alarm"]
