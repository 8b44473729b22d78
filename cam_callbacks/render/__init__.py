"""Images for people: colormaps, overlays, heatmap grids, the callback's per-run images, PNG files. Torch only."""

from cam_callbacks.render.images import apply_colormap, colormap_lut, heatmap_grid, map_tiles, mask_outline, overlay, to_display
from cam_callbacks.render.png import encode_png, save_pngs, save_text
from cam_callbacks.render.publish import ImageStyle, ProbeView, run_images

__all__ = [
    "ImageStyle", "ProbeView", "apply_colormap", "colormap_lut", "encode_png", "heatmap_grid", "map_tiles", "mask_outline",
    "overlay", "run_images", "save_pngs", "save_text", "to_display",
]  # fmt: skip
