"""The HTML report, the how-to-read text, class names in captions and the custom-scalars titles (callbacks/report.py)."""

from __future__ import annotations

import base64
import html.parser
import io
import os
import shutil
import subprocess
import tempfile

import pytest
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.plugins.custom_scalar import layout_pb2

import cam_callbacks as cc
from cam_callbacks.monitor.alarm import AlarmHit
from cam_callbacks.render.report import RunReport, find_class_names, markdown_to_html

from _lightning_models import TinyNet, fit, loaders, read_events, trainer

CHROMIUM = "/usr/bin/chromium"


class _Images(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list = []
        self.links: list = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.sources.append(attributes["src"])
        if tag in ("link", "script") or attributes.get("href"):
            self.links.append((tag, attributes))
        self.scripts += tag == "script"


def _parse(page: str) -> _Images:
    parser = _Images()
    parser.feed(page)
    return parser


def _decoded(source: str) -> Image.Image:
    assert source.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))


def _report_page() -> str:
    report = RunReport()
    for step in (5, 11):
        report.add_run(step, step // 6, {
            "cam/gradcam/adcc": 0.5 + step / 100, "cam/gradcam/deletion_auc": 0.3, "cam/gradcam/shortcut_score": 0.1,
            "cam/gradcam/energy_in_nuisance_ratio": 6.5, "cam/gradcam/class_shortcut_class": 2.0, "cam/alarm": float(step > 6),
        })  # fmt: skip
    evidence = torch.zeros(3, 20, 30, dtype=torch.uint8)
    report.add_alarm(11, 1, [AlarmHit("gradcam", "energy_in_nuisance_ratio", 6.5, 2.0, "above", (9, 14))], {"gradcam": evidence})
    report.last_images = {"gradcam": {"grid": torch.full((3, 10, 10), 200, dtype=torch.uint8), "evolution": torch.zeros(3, 8, 8, dtype=torch.uint8)}}
    return report.html("CAMMonitor report (cam)", "target layer `x`", "### How\n\n- **rows**: images", "global step", "cam")


def test_report_is_self_contained_and_lists_the_alarm_with_its_evidence():
    page = _report_page()
    parsed = _parse(page)
    assert parsed.links == [] and parsed.scripts == 0  # no external file, no script, no network
    sizes = [_decoded(source).size for source in parsed.sources]
    assert (30, 20) in sizes and (10, 10) in sizes and (8, 8) in sizes  # evidence, final grid, evolution strip
    # three curve charts (gradcam's fractions with deletion_auc, its ratios, the monitor; a class index is no curve)
    assert len(sizes) == 3 + 3  # and the three images
    assert "gradcam: energy_in_nuisance_ratio = 6.5 is above 2 (worst probe images: 9, 14)" in page
    assert "<li><b>rows</b>: images</li>" in page


def test_markdown_subset():
    text = "### Title\n\n- a `code`\n- b\n\n| x | y |\n|---|---|\n| 1 | 2 |\nend"
    assert markdown_to_html(text).split("\n")[:6] == [
        "<h3>Title</h3>", "<ul><li>a <code>code</code></li>", "<li>b</li>", "</ul>", "<table><tr><th>x</th><th>y</th></tr>",
        "<tr><td>1</td><td>2</td></tr>",
    ]  # fmt: skip


class _Classes:
    classes = ["zero", "one", "two"]


def test_class_names_given_found_or_refused():
    assert find_class_names(["a", "b"], [], 2) == (["a", "b"], "")
    with pytest.raises(ValueError, match="class_names has 3 names but the model has 2 outputs"):
        find_class_names(["a", "b", "c"], [], 2)
    assert find_class_names(None, [object(), _Classes()], 3) == (["zero", "one", "two"], "")
    names, problem = find_class_names(None, [_Classes()], 4)
    assert names is None and "_Classes.classes has 3 names but the model has 4 outputs" in problem
    with pytest.raises(ValueError, match="class_names must be a list"):
        cc.CAMMonitor(style=cc.ImageStyle(class_names="abc"))


@pytest.mark.slow
def test_fit_writes_report_how_to_read_and_titled_charts(tmp_path):
    train, val = loaders()
    val.dataset.classes = ["red", "green", "blue"]  # found on the validation dataset, as torchvision datasets have it
    monitor = cc.CAMMonitor(methods=["gradcam", "layercam"], probe=4, prefix="probe")
    _, t = fit(tmp_path, monitor, seed=0, data=(train, val), max_epochs=2, logger=TensorBoardLogger(str(tmp_path), name="tb"))
    path = os.path.join(t.logger.log_dir, "probe", "report.html")
    with open(path, encoding="utf-8") as handle:
        page = handle.read()
    assert monitor._logger._names == ["red", "green", "blue"]
    parsed = _parse(page)
    assert all(_decoded(source).size[0] > 0 for source in parsed.sources) and parsed.links == []
    assert "probe/gradcam/evolution" in page and "probe/layercam/grid" in page and "The alarm never fired" in page
    events = read_events(tmp_path)
    how_to = events["tensors"]["probe/how_to_read/text_summary"]
    assert len(how_to) == 1 and "probe order" in how_to[0].tensor_proto.string_val[0].decode()
    layout = layout_pb2.Layout.FromString(events["tensors"]["custom_scalars__config__"][-1].tensor_proto.string_val[0])
    titles = [chart.title for category in layout.category for chart in category.chart]
    assert titles[0] == "ADCC [probe]: gradcam, layercam"
    evolution = events["image_data"]["probe/gradcam/evolution"]
    assert [e.width for e in evolution][1] > [e.width for e in evolution][0]  # one more column per run


@pytest.mark.slow
def test_report_off_and_validate_writes_it(tmp_path):
    _, t = fit(tmp_path / "off", cc.CAMMonitor(methods=["gradcam"], probe=4, report=False), seed=0, max_epochs=1)
    assert not os.path.exists(os.path.join(t.logger.log_dir, "cam", "report.html"))
    _, val = loaders()
    t = trainer(tmp_path / "validate", [cc.CAMMonitor(methods=["gradcam"], probe=4)])
    t.validate(TinyNet(), val, verbose=False)
    assert os.path.exists(os.path.join(t.logger.log_dir, "cam", "report.html"))


@pytest.mark.slow
def test_report_loads_every_image_in_a_real_browser(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (CI installs the Debian package 'chromium'); the parsing tests above still ran")
    check = (
        "<script>window.addEventListener('load', () => { const images = [...document.images];"
        "document.title = 'loaded ' + images.filter(i => i.complete && i.naturalWidth > 0).length + ' of ' + images.length; });</script>"
    )
    page = _report_page().replace("</body>", check + "</body>")
    broken = page.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)  # the check can fail: a broken image
    assert "<title>loaded 6 of 6</title>" in _dom(tmp_path, page)  # 3 charts, evolution, evidence, final grid
    assert "<title>loaded 5 of 6</title>" in _dom(tmp_path, broken)


def _dom(tmp_path, page: str) -> str:
    """The page's DOM after its scripts ran in headless Chromium."""
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    profile = tempfile.mkdtemp(dir=tmp_path)
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
        path.as_uri(),
    ]  # fmt: skip
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
