"""Does the alarm find shortcuts nobody told it about, and stay quiet on clean runs? Detection and false-alarm rates.

For each kind of shortcut of :mod:`cam_callbacks.datasets.cues` (a corner patch of a class colour, a
text-like watermark, a frame, a background colour, a position bias), on one class or on all classes,
and for clean data, it trains a small CNN (3 conv blocks, global average pooling, 32x32 images) with
several seeds. After every epoch it explains a probe set drawn like the training data (the cue
follows the label there too, as in a user's validation split) with Grad-CAM of the labels, exactly
as :class:`~cam_callbacks.CAMMonitor` does (``MapHistory.analyze`` with the probe outcome,
``ThresholdAlarm.evaluate`` and ``shortcut_hits`` with the occlusion confirmation), in three information
regimes: nuisance and object masks, object masks only, no masks. It reports per regime and per kind:

- detection rate: shortcut runs flagged at some epoch; epochs to detection (first flagged epoch, 1-based);
- false-alarm rate: clean runs flagged at any epoch;

for the new rule (CAMMonitor's default alarm as it is), the old rule (the same alarm without its
``ShortcutAlarm``) and validation accuracy alone (a run is flagged when its final
validation accuracy, on a split drawn like training, is above every clean run's). With ``--sweep``
it also searches the per-class thresholds on the first half of the seeds and reports the best
choice on the second half (how the defaults were chosen).

    python benchmarks/bench_shortcut_detection.py --quick            # CI-size: 1 seed, 3 epochs, 13 runs: 1 min on 2 idle cores
    python benchmarks/bench_shortcut_detection.py --out table.md    # 3 seeds, 5 epochs, 39 runs: the README table (20 min on 2 shared cores)
    python benchmarks/bench_shortcut_detection.py --sweep           # also choose the thresholds (first seeds) and test them (last seeds)
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from cam_callbacks import explain
from cam_callbacks.callbacks.shortcut_watch import probe_outcome, shortcut_hits
from cam_callbacks.datasets.cues import CUE_KINDS, make_cue_set
from cam_callbacks.datasets.patches import patch_mask
from cam_callbacks.engine.occlusion import occlusion_effect
from cam_callbacks.engine.result import Explanation, ProbeView
from cam_callbacks.monitor.alarm import DEFAULT_ALARM, AlarmPolicy, ShortcutAlarm, shortcut_policy, threshold_hits
from cam_callbacks.monitor.history import MapHistory

REGIMES = ("nuisance", "objects", "none")
SIZE, CLASSES = 32, 4


def small_cnn(seed: int) -> nn.Module:
    """Three conv blocks (8x8 maps at 32x32 inputs), global average pooling, one linear layer."""
    torch.manual_seed(seed)

    def block(cin: int, cout: int, pool: bool) -> nn.Sequential:
        layers: List[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))

    return nn.Sequential(block(3, 16, True), block(16, 32, True), block(32, 32, False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, CLASSES))


#: Clean runs per seed (false-alarm rates need more runs than detection rates).
CLEAN_RUNS = 3


def configs() -> List[Tuple[str, str]]:
    return [("clean", "-")] + [(kind, classes) for kind in CUE_KINDS for classes in ("one", "all")]


def plan(seeds: int) -> List[Tuple[str, str, int, int]]:
    """``(kind, classes, seed, data seed)`` of every run: each shortcut configuration once per seed, clean ``CLEAN_RUNS`` times."""
    runs = []
    for seed in range(1, seeds + 1):
        runs += [("clean", "-", seed, seed + 100 * j) for j in range(CLEAN_RUNS)]
        runs += [(kind, classes, seed, seed) for kind, classes in configs()[1:]]
    return runs


def _data(kind: str, classes: str, seed: int, num_train: int, num_probe: int) -> Tuple[Any, Any, Any]:
    clean = kind == "clean"
    k = "patch" if clean else kind
    train = make_cue_set(num_train, k, "one" if clean else classes, SIZE, CLASSES, seed=1000 + seed, cue=not clean)
    probe = make_cue_set(num_probe, k, "one" if clean else classes, SIZE, CLASSES, seed=2000 + seed, cue=not clean)
    val = make_cue_set(256, k, "one" if clean else classes, SIZE, CLASSES, seed=3000 + seed, cue=not clean)
    return train, probe, val


def _regime_masks(regime: str, probe: Any, clean: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    if regime == "none":
        return None, None
    if regime == "objects":
        return probe.masks, None
    nuisance = patch_mask(SIZE, "top_left").expand_as(probe.masks).clone() if clean else probe.nuisance_masks
    return probe.masks, nuisance


def _candidates(findings: Any, model: nn.Module, images: torch.Tensor) -> List[Dict[str, float]]:
    """Raw candidates (for the sweep): score, class, accuracy, confidence, consistency and occlusion effect of those scoring over 0.05."""
    rows = []
    for cand in findings.candidates:
        if cand.score <= 0.05:
            continue
        targets = torch.full((cand.members.numel(),), cand.class_index, dtype=torch.long)
        effect = float(occlusion_effect(model, images[cand.members], targets, cand.region).effect)
        rows.append({
            "class": cand.class_index, "score": cand.score, "accuracy": cand.accuracy, "confidence": cand.confidence,
            "effect": effect, "consistency": cand.consistency,
        })  # fmt: skip
    return rows


def _epoch(
    model: nn.Module,
    probe: Any,
    val: Any,
    clean: bool,
    histories: Dict[str, MapHistory],
    rule: Sequence[AlarmPolicy],
) -> Dict[str, Any]:
    model.eval()
    with torch.no_grad():
        logits = model(probe.images)
        val_acc = float((model(val.images).argmax(1) == val.labels).float().mean())
    maps = explain(model, probe.images, "gradcam", target_layer=model[2], targets=probe.labels, batch_size=128)
    record: Dict[str, Any] = {"val_acc": val_acc, "probe_acc": float((logits.argmax(1) == probe.labels).float().mean())}
    for regime in REGIMES:
        masks, nuisance = _regime_masks(regime, probe, clean)
        view = ProbeView(probe.images, probe.labels, masks, nuisance, torch.arange(len(probe.labels)), "softmax")
        explanation = Explanation({"gradcam": maps}, logits, probe.labels, "2")
        analyses = histories[regime].analyze({"gradcam": maps}, masks, nuisance, (), **probe_outcome(explanation, view, shortcut_policy(rule)))
        scalars = {f"gradcam/{k}": v for k, v in analyses["gradcam"].scalars.items()}
        old_hits = threshold_hits(rule, scalars)  # the map-wide bounds alone: the rule before the per-class one
        new_hits = old_hits + shortcut_hits(shortcut_policy(rule), analyses, model, view, {}, "cam")
        findings = analyses["gradcam"].findings
        record[regime] = {
            "old": bool(old_hits),
            "new": bool(new_hits),
            "hits": [hit.message for hit in new_hits],
            "candidates": _candidates(findings, model, probe.images) if findings is not None else [],
        }
    return record


def train_run(
    kind: str, classes: str, seed: int, data_seed: int, epochs: int, num_train: int, num_probe: int, rule: Sequence[AlarmPolicy]
) -> Dict[str, Any]:
    """One training run; per epoch, what each regime's rules say."""
    train, probe, val = _data(kind, classes, data_seed, num_train, num_probe)
    model = small_cnn(data_seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(data_seed)
    histories = {regime: MapHistory() for regime in REGIMES}
    epochs_out = []
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train.labels), generator=order).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(train.images[batch]), train.labels[batch]).backward()
            optimiser.step()
        epochs_out.append(_epoch(model, probe, val, kind == "clean", histories, rule))
    return {"kind": kind, "classes": classes, "seed": seed, "epochs": epochs_out}


def _learned(cand: Dict[str, float], accuracy: Optional[float], confidence: Optional[float]) -> bool:
    """ShortcutAlarm.learned on a recorded candidate (NaN != NaN; a None threshold is not used)."""
    acc = float("nan") if accuracy is None else cand["accuracy"]
    conf = float("nan") if confidence is None else cand["confidence"]
    if acc != acc and conf != conf:
        return True
    return (acc == acc and acc >= (accuracy or 0.0)) or (conf == conf and conf >= (confidence or 0.0))


def _fires(
    epoch: Dict[str, Any], regime: str, score: float, accuracy: Optional[float], effect: Optional[float], old: bool,
    confidence: Optional[float] = 0.8, consistency: Optional[float] = None, unmasked_score: Optional[float] = None,
) -> bool:  # fmt: skip
    """The per-class rule with these thresholds, as ShortcutAlarm.suspects / evaluate apply it, plus the old rule."""
    if old:
        return bool(epoch[regime]["old"])
    suspects: Dict[int, Dict[str, float]] = {}
    if regime == "none" and unmasked_score is not None:  # ShortcutAlarm.score_limit: maps found without object masks
        score = unmasked_score
    for cand in epoch[regime]["candidates"]:  # highest score first
        consistent = consistency is None or cand.get("consistency", float("nan")) >= consistency
        if cand["score"] > score and consistent and _learned(cand, accuracy, confidence):
            suspects.setdefault(int(cand["class"]), cand)
    fired = any(effect is None or c["effect"] >= effect for c in suspects.values())
    return fired or bool(epoch[regime]["old"])


def rates(runs: Sequence[Dict[str, Any]], regime: str, rule: Any) -> Dict[str, Any]:
    """Detection rate, false-alarm rate, mean first epoch (1-based) for a rule ``(epoch, regime) -> bool``."""
    shortcut = [r for r in runs if r["kind"] != "clean"]
    clean = [r for r in runs if r["kind"] == "clean"]
    firsts = []
    for run in shortcut:
        flagged = [i for i, e in enumerate(run["epochs"]) if rule(e, regime)]
        if flagged:
            firsts.append(flagged[0] + 1)
    false = sum(any(rule(e, regime) for e in run["epochs"]) for run in clean)
    return {
        "detected": len(firsts), "shortcut_runs": len(shortcut), "false": false, "clean_runs": len(clean),
        "epochs": sum(firsts) / len(firsts) if firsts else float("nan"),
    }  # fmt: skip


def sweep(runs: Sequence[Dict[str, Any]]) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """The thresholds with the best worst-regime (detection - 4 x false alarms) on ``runs``."""
    best: Tuple[float, Tuple[Any, ...]] = (-1e9, (0.3, 0.9, 0.1, 0.9, None))
    grid = itertools.product(
        (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5), (0.8, 0.9, 0.95, None), (None, 0.0, 0.02, 0.05, 0.1, 0.2), (0.6, 0.7, 0.8, 0.9, None),
        (None, 0.8, 0.85, 0.9, 0.95),
    )  # fmt: skip
    for limits in grid:

        def fires(e: Dict[str, Any], g: str, limits: Tuple[Any, ...] = limits) -> bool:
            return _fires(e, g, limits[0], limits[1], limits[2], False, limits[3], limits[4])

        results = [rates(runs, regime, fires) for regime in REGIMES]
        worst = min(r["detected"] / max(r["shortcut_runs"], 1) - 4 * r["false"] / max(r["clean_runs"], 1) for r in results)
        if worst > best[0]:
            best = (worst, limits)
    return best[1], {"objective": best[0]}


def _cell(r: Dict[str, Any], epochs: bool = True) -> str:
    text = f"{r['detected']}/{r['shortcut_runs']}" if r["shortcut_runs"] else "-"
    if epochs and r["detected"]:
        text += f" (ep {r['epochs']:.1f})"
    return text


def table(runs: Sequence[Dict[str, Any]], rule: Sequence[AlarmPolicy]) -> str:
    """Markdown: per regime and rule, detection and false alarms; per kind, detection of the new rule.

    The new rule is applied to the recorded candidates with ``rule``'s thresholds (as :func:`_fires`), so a
    table can be rebuilt from ``--json`` records for other thresholds without training again.
    """
    policy = shortcut_policy(rule) or ShortcutAlarm()
    limits = (float(policy.score), policy.min_accuracy, policy.min_occlusion_effect)
    confidence, consistency, unmasked = policy.min_confidence, policy.min_consistency, policy.unmasked_score
    new = lambda e, g: _fires(e, g, *limits, False, confidence, consistency, unmasked)
    old = lambda e, g: bool(e[g]["old"])
    bar = max((r["epochs"][-1]["val_acc"] for r in runs if r["kind"] == "clean"), default=1.0)
    val = lambda e, g: e["val_acc"] > bar
    lines = ["| regime | rule | detection | false alarms | epochs to detection |", "|---|---|---|---|---|"]
    for regime in REGIMES:
        for name, fires in (("new (default alarm)", new), ("old (no per-class rule)", old), ("validation accuracy alone", val)):
            r = rates(runs, regime, fires)
            det = f"{r['detected']}/{r['shortcut_runs']} ({100 * r['detected'] / max(r['shortcut_runs'], 1):.0f}%)"
            fa = f"{r['false']}/{r['clean_runs']} ({100 * r['false'] / max(r['clean_runs'], 1):.0f}%)"
            lines.append(f"| {regime} | {name} | {det} | {fa} | {r['epochs']:.1f} |")
    lines += ["", "| kind (cued classes) | " + " | ".join(f"{g}: new / old" for g in REGIMES) + " |", "|---|" + "---|" * len(REGIMES)]
    for kind, classes in configs()[1:]:
        subset = [r for r in runs if (r["kind"], r["classes"]) in ((kind, classes), ("clean", "-"))]
        cells = [f"{_cell(rates(subset, g, new))} / {_cell(rates(subset, g, old), False)}" for g in REGIMES]
        lines.append(f"| {kind} ({classes}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 epochs, 480 training images")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration (1..N; the tests use seed 0)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-probe", type=int, default=96)
    parser.add_argument("--sweep", action="store_true", help="choose the thresholds on the first half of the seeds, report on the rest")
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    parser.add_argument("--json", default=None, help="write every run's records here")
    parser.add_argument("--from-json", default=None, help="rebuild the table from these records (no training)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.num_train = 1, 3, 480
    torch.set_num_threads(1)
    start = time.perf_counter()
    rule = DEFAULT_ALARM
    runs = []
    if args.from_json:
        with open(args.from_json) as handle:
            runs = json.load(handle)
        args.seeds = max(r["seed"] for r in runs)
    for kind, classes, seed, data_seed in [] if args.from_json else plan(args.seeds):
        began = time.perf_counter()
        runs.append(train_run(kind, classes, seed, data_seed, args.epochs, args.num_train, args.num_probe, rule))
        flags = {g: [int(e[g]["new"]) for e in runs[-1]["epochs"]] for g in REGIMES}
        took = time.perf_counter() - began
        print(f"seed {seed} {kind:10s} {classes:3s} val_acc {runs[-1]['epochs'][-1]['val_acc']:.3f} new {flags} ({took:.1f} s)", flush=True)
    elapsed = time.perf_counter() - start
    took = "rebuilt from records" if args.from_json else f"{elapsed / 60:.1f} min"
    epochs = len(runs[0]["epochs"]) if runs else args.epochs
    text = f"{len(runs)} runs ({args.seeds} seed(s); clean x{CLEAN_RUNS}), {epochs} epochs, {took}\n\n" + table(runs, rule)
    if args.sweep and args.seeds >= 2:
        half = args.seeds // 2
        chosen, info = sweep([r for r in runs if r["seed"] <= half])
        held = [r for r in runs if r["seed"] > half]
        lines = [
            f"\nSweep on seeds 1..{half}: max_class_shortcut_score={chosen[0]}, min_class_accuracy={chosen[1]}, "
            f"min_occlusion_effect={chosen[2]}, min_class_confidence={chosen[3]}, min_class_consistency={chosen[4]} "
            f"(objective {info['objective']:.3f}); "
            f"on seeds {half + 1}..{args.seeds}:"
        ]
        for regime in REGIMES:
            r = rates(held, regime, lambda e, g: _fires(e, g, *chosen[:3], False, chosen[3], chosen[4]))
            lines.append(f"- {regime}: detection {r['detected']}/{r['shortcut_runs']}, false alarms {r['false']}/{r['clean_runs']}, epochs {r['epochs']:.1f}")
        text += "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(runs, handle)
    return {"runs": runs, "text": text, "elapsed": elapsed}


if __name__ == "__main__":
    main()
