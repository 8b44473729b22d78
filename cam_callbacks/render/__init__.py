"""Images for people: colormaps and the overlay (``images``), the one grid builder
(``grids``), colour bars (``legend``), text, the callback's per-run
images (``publish``), the notebook helpers (``notebook``), PNG files.
Torch only (PIL and matplotlib lazily). Internal: import from the defining module."""
