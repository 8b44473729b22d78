"""The stateful parts of watching a training run, each with its own ``state_dict``: the alarm, the cost budget,
the history of maps (drift). Internal: the public alarm policies are exported by ``cam_callbacks``."""
