"""Images for people: colormaps and the overlay (:mod:`~cam_callbacks.render.images`), the one grid builder
(:mod:`~cam_callbacks.render.grids`), colour bars (:mod:`~cam_callbacks.render.legend`), text, the callback's per-run
images (:mod:`~cam_callbacks.render.publish`), the notebook helpers (:mod:`~cam_callbacks.render.notebook`), PNG files.
Torch only (PIL and matplotlib lazily). Internal: import from the defining module."""
