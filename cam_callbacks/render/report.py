"""The report a person can send: one self-contained HTML page per run directory, and the "how to read this" text.

``RunReport`` keeps what the page needs while training goes on (the scalars of every run, the alarm
history with its evidence images, the last run's images, bounded) and ``RunReport.write`` renders
``<log_dir>/<prefix>/report.html`` at the end of ``fit``/``validate``: configuration, how to read it,
the metric curves (matplotlib, Agg), each method's evolution strip, the alarm history, the final
images. Every image is embedded as a ``data:`` URI: the page needs no other file and no network.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from torch import Tensor

from cam_callbacks.monitor.alarm import AlarmHit
from cam_callbacks.render.png import encode_png
from cam_callbacks.utils.files import atomic_write

#: Alarm runs kept with their evidence (the first ones: when it started is what matters).
MAX_ALARMS = 20
_FAITHFULNESS_HELP = (
    "`adcc` (higher is better: one number that combines the three below), `average_drop` (how much the target's "
    "probability drops when only the highlighted part is shown, lower is better), `coherency` (whether the map "
    "stays the same on the highlighted part, higher is better), `complexity` (share of the image highlighted, "
    "lower is simpler), `increase_in_confidence` (share of images whose probability rises), all fractions in [0, 1]. "
    "ADCC says how well the maps explain *the model*, not whether the model is right: the faithful map of a model "
    "that learned a shortcut sits on the shortcut, and can score higher than a clean model's"
)
_WATCH_HELP = (
    "`energy_in_mask` / `energy_in_nuisance`: share of the map's mass on the object / on the nuisance region; "
    "`*_ratio`: the same divided by the region's share of the image (1.0 = no better than a uniform map); "
    "`pointing_game`: share of images whose map peaks inside the object; `shortcut_score`: how much the maps "
    "of all images gather on the same small place (a fixed cue); `drift_prev` / `drift_first`: correlation with "
    "the previous / first run's maps (1.0 = unchanged); `class_shortcut_score`: the highest score of one class's "
    "maps (or a cluster of them) gathering on one region, `class_shortcut_class` that class, `occlusion_effect`: how "
    "much hiding that region lowers the class's probability more than hiding the same area elsewhere; "
    "`deletion_auc` / `insertion_auc` / `road` (with `metrics=`): the target's probability as the most "
    "relevant pixels are removed / added (lower / higher is better); `alarm`: 1 when the alarm rule fired"
)
#: Scalars that are not curves of a scale (a class index, a stride): left out of the report's charts.
_NOT_CHARTED = ("class_shortcut_class", "every_n_runs")


def how_to_read(prefix: str, methods: Sequence[str], config: str, x_axis: str, masks: bool, nuisance: bool) -> str:
    """Markdown that explains the images and scalars of one monitor (its text entry ``<prefix>/how_to_read``)."""
    outline = ""
    if masks or nuisance:
        parts = (("**white** = the object", masks), ("**magenta** = the nuisance region", nuisance))
        outline = " Outlines: " + ", ".join(part for part, on in parts if on) + "."
    return "\n".join(
        [
            f"### How to read `{prefix}/*` ({', '.join(methods)})",
            "",
            f"- **Configuration**: {config}. The x-axis of every `{prefix}/*` entry is the {x_axis}.",
            f"- **`{prefix}/<method>/grid`**: the probe images in probe order (the same image in the same place at every "
            "step: drag the step slider to follow one). Each cell: caption, the image, and the map over it. Caption: "
            "`#probe index  label → prediction` (red with ✗ when wrong), `p=` the explained class's probability, and the "
            "image's score (ADCC, or the share of the map inside the object when masks are given)." + outline,
            f"- **`{prefix}/<method>/worst`** (with masks): the same cells, worst first (least in the object / most on the nuisance).",
            "- **Colours**: the colour bar under each image. Grid maps are min-max normalised per image: 1 (red) is where "
            "*this* image's map is highest, whatever its absolute level; the overlay is more opaque where the map is high.",
            f"- **`{prefix}/<method>/class_means`, `mean_map`**: mean maps per explained class and over all images (with "
            "masks: outside the objects) on the maps' absolute 0-1 scale: an evenly spread map stays dim; a bright spot "
            "at the same place in every class is the signature of a shortcut.",
            f"- **`{prefix}/<method>/evolution`**: the first probe images (rows) at every run so far (columns, original "
            "first; at most 8 runs, long runs are thinned evenly), so the whole history shows without the slider.",
            f"- **Scalars**: {_FAITHFULNESS_HELP}. Watch: {_WATCH_HELP}.",
            f"- **`{prefix}/alarm`** (text): which rule fired, its value and threshold, and the worst probe images (the `#` in the captions).",
        ]
    )


def markdown_to_html(text: str) -> str:
    """The small Markdown subset of ``how_to_read`` and the alarm tables as HTML (headings, lists, tables, bold, code)."""
    out: List[str] = []
    in_list = in_table = False
    for raw in text.splitlines():
        line = html.escape(raw)
        line = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", re.sub(r"`(.+?)`", r"<code>\1</code>", line))
        if in_list and not line.startswith("- "):
            out.append("</ul>")
            in_list = False
        if in_table and not line.startswith("|"):
            out.append("</table>")
            in_table = False
        if line.startswith("### "):
            out.append(f"<h3>{line[4:]}</h3>")
        elif line.startswith("- "):
            out.append(("" if in_list else "<ul>") + f"<li>{line[2:]}</li>")
            in_list = True
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            tag = "td" if in_table else "th"
            out.append(("" if in_table else "<table>") + "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            in_table = True
        elif line.strip():
            out.append(f"<p>{line}</p>")
    out.append("</ul>" if in_list else "")
    out.append("</table>" if in_table else "")
    return "\n".join(out)


def find_class_names(given: Optional[Sequence[str]], sources: Sequence[Any], num_classes: int) -> Tuple[Optional[List[str]], str]:
    """Class names for captions: ``given``, else the ``class_names`` / ``classes`` attribute of the first of ``sources``
    (datamodule, datasets) that has a list of strings. Returns ``(names or None, problem)``; ``problem`` is ``""``
    or why names found on a source were not used. Raises ValueError when ``given`` has the wrong length.
    """
    if given is not None:
        if len(given) != num_classes:
            raise ValueError(f"class_names has {len(given)} names but the model has {num_classes} outputs: give one name per class")
        return [str(name) for name in given], ""
    for source in sources:
        for attribute in ("class_names", "classes"):
            names = getattr(source, attribute, None)
            if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
                if len(names) != num_classes:
                    return None, (
                        f"{type(source).__name__}.{attribute} has {len(names)} names but the model has {num_classes} "
                        "outputs; captions show class indices (pass class_names= to CAMMonitor)"
                    )
                return list(names), ""
    return None, ""


class AlarmRecord(NamedTuple):
    """One run where the alarm fired: when, the hits, and the evidence image (the worst images' cells), PNG bytes."""

    step: int
    epoch: int
    hits: List[AlarmHit]
    evidence: Dict[str, bytes]


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img src="{_data_uri(png)}" alt="{html.escape(alt)}">'


class RunReport:
    """What the HTML report needs, kept during training (scalars per run, alarms with evidence, the last images)."""

    def __init__(self) -> None:
        self.runs: List[Tuple[int, int, Dict[str, float]]] = []
        self.alarms: List[AlarmRecord] = []
        self.last_images: Dict[str, Dict[str, Tensor]] = {}

    def add_run(self, step: int, epoch: int, scalars: Mapping[str, float]) -> None:
        """Keep one run's scalars (for the curves)."""
        self.runs.append((step, epoch, dict(scalars)))

    def add_alarm(self, step: int, epoch: int, hits: List[AlarmHit], evidence: Dict[str, Tensor]) -> None:
        """Keep a run where the alarm fired, with ``{method: (3, H, W) uint8 image}`` evidence (the first ``MAX_ALARMS``)."""
        if len(self.alarms) < MAX_ALARMS:
            self.alarms.append(AlarmRecord(step, epoch, list(hits), {m: encode_png(image) for m, image in evidence.items()}))

    def _curves(self, prefix: str, x_axis: str) -> List[Tuple[str, bytes]]:
        """One PNG chart per method and metric group: ``[(title, png)]``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        tags = sorted({tag for _, _, scalars in self.runs for tag in scalars})
        groups: Dict[str, List[str]] = {}
        for tag in tags:
            parts = tag[len(prefix) + 1 :].split("/")
            if parts[-1] in _NOT_CHARTED:
                continue
            group = parts[0] if len(parts) > 1 else "monitor"
            if len(parts) > 1:  # one chart per scale: fractions, ratios (multiples of chance)
                group += " (ratios)" if parts[-1].endswith("_ratio") else " (fractions)"
            groups.setdefault(group, []).append(tag)
        charts = []
        for group, members in groups.items():
            figure = Figure(figsize=(6.4, 3.0), layout="constrained")
            FigureCanvasAgg(figure)
            axis = figure.add_subplot()
            for tag in members:
                points = [(step, scalars[tag]) for step, _, scalars in self.runs if tag in scalars]
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=tag.split("/")[-1])
            axis.set_xlabel(x_axis)
            axis.set_title(f"{prefix}/{group}" if group != "monitor" else f"{prefix}: alarm, errors, time")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=90)
            charts.append((group, buffer.getvalue()))
        return charts

    def html(self, title: str, config: str, how_to: str, x_axis: str, prefix: str) -> str:
        """The whole page as a string."""
        parts = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}img{max-width:100%;border:1px solid #ddd}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}code{background:#f3f3f3}"
            ".alarm{color:#b00}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f"<p>Written {time.strftime('%Y-%m-%d %H:%M:%S')} after {len(self.runs)} run(s).</p>",
            f"<h2>Configuration</h2><p>{html.escape(config)}</p>",
            "<h2>How to read this</h2>",
            markdown_to_html(how_to),
            "<h2>Metric curves</h2>",
        ]
        parts += [_img(png, f"curves of {group}") for group, png in self._curves(prefix, x_axis)] or ["<p>No run yet.</p>"]
        parts.append("<h2>Evolution of the explanations</h2>")
        for method, named in self.last_images.items():
            if "evolution" in named:
                parts += [f"<h3>{html.escape(f'{prefix}/{method}/evolution')}</h3>", _img(encode_png(named["evolution"]), f"{method} evolution")]
        parts.append("<h2>Alarm history</h2>")
        if not self.alarms:
            parts.append("<p>The alarm never fired.</p>")
        for record in self.alarms:
            parts.append(f"<h3 class='alarm'>{x_axis} {record.step} (epoch {record.epoch})</h3><ul>")
            parts += [f"<li>{html.escape(hit.message)}</li>" for hit in record.hits]
            parts.append("</ul>")
            parts += [_img(png, f"alarm evidence {method}") for method, png in record.evidence.items()]
        parts.append("<h2>Final images</h2>")
        for method, named in self.last_images.items():
            for name, image in named.items():
                if name != "evolution":
                    parts += [f"<h3>{html.escape(f'{prefix}/{method}/{name}')}</h3>", _img(encode_png(image), f"{method} {name}")]
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, directory: str, prefix: str, config: str, how_to: str, x_axis: str) -> str:
        """Write ``<directory>/<prefix>/report.html``; returns its path.

        The page goes to a temporary file beside it that then replaces it (``atomic_write``):
        a kill or Ctrl-C during the write leaves the previous report whole, never a truncated or empty one.
        """
        path = os.path.join(directory, prefix, "report.html")
        page = self.html(f"CAMMonitor report ({prefix})", config, how_to, x_axis, prefix)
        return atomic_write(path, page)
