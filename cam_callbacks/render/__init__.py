"""Images for people: colormaps, overlays, heatmap grids, the callback's per-run images, PNG files. Torch only."""

from cam_callbacks.render.images import apply_colormap, colormap_lut, heatmap_grid, map_tiles, mask_outline, overlay, to_display
from cam_callbacks.render.notebook import plot_maps, show_maps
from cam_callbacks.render.png import encode_png, save_pngs, save_text
from cam_callbacks.render.publish import ImageStyle, ProbeView, run_images

__all__ = [
    "ImageStyle", "ProbeView", "apply_colormap", "colormap_lut", "encode_png", "heatmap_grid", "map_tiles", "mask_outline",
    "overlay", "plot_maps", "run_images", "save_pngs", "save_text", "show_maps", "to_display",
]  # fmt: skip
