"""`qc evaluate` and `qc explain`: honest metrics on held-out data, a reject threshold for a target
defect recall, class activation maps, plots and a self-contained HTML report."""

from __future__ import annotations

import html
import json
from pathlib import Path

import cv2
import numpy as np
from sklearn import metrics as skm

from edge import tiles
from edge.decision import GOOD, defect_scores
from edge.localize import defect_map
from edge.preprocess import resize
from edge.tiles import worst
from firmware_io.pages import page, png_data_uri
from training import data, plots, recipe
from training import model as models
from training.config import FALSE_REJECT_BUDGET, TARGET_RECALL
from training.errors import TrainingError

__all__ = ["GOOD_ONLY_METHOD", "THRESHOLD_METHOD", "binary_report", "choose_threshold", "evaluate", "explain",
           "good_quantile", "overlay", "pick_threshold", "pointing_game", "recall_at_false_rejects", "recall_interval"]


THRESHOLD_METHOD = ("the lower of the defect scores' fitted quantile for the target recall (a normal fit to their "
                    "logits, from the median and the 16th percentile) and the good scores' quantile for the "
                    "false-reject budget")
GOOD_ONLY_METHOD = ("the good validation photos' scores' quantile for the false-reject budget: the model was trained "
                    "on good parts only, and no real defect set the threshold")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def choose_threshold(scores: np.ndarray, is_defect: np.ndarray, target_recall: float,
                     max_false_rejects: float = FALSE_REJECT_BUDGET) -> float:
    """A reject threshold (reject when score >= t) that does not hinge on one image (THRESHOLD_METHOD).

    With 60 validation defects a 99 % recall leaves no miss, so the highest threshold that reaches it is the
    single worst defect's score. Instead the defects' lower tail is fitted (a normal in logit space, its centre
    and spread from the median and the 16th percentile, which no single image moves much) and its quantile for
    the target taken. Where the good parts allow a lower threshold within the false-reject budget, that one is
    taken: the budget buys recall beyond what a fit of a few dozen defects can promise."""
    from scipy.stats import norm

    defects, goods = scores[is_defect], scores[~is_defect]
    if len(defects) == 0:
        raise TrainingError("no defective parts in the split: cannot choose a threshold")
    z = _logit(defects)
    centre = float(np.median(z))
    spread = max(0.0, centre - float(np.quantile(z, norm.cdf(-1))))
    fitted = float(1 / (1 + np.exp(-(centre + float(norm.ppf(1 - target_recall)) * spread))))
    return min(fitted, good_quantile(goods, max_false_rejects)) if len(goods) else fitted


def good_quantile(goods: np.ndarray, max_false_rejects: float) -> float:
    """The threshold that rejects `max_false_rejects` of these good parts' scores (interpolated in logit space)."""
    if len(goods) == 0:
        raise TrainingError("no good parts in the split: cannot choose a threshold from them")
    return float(1 / (1 + np.exp(-np.quantile(_logit(goods), 1 - max_false_rejects))))


def pick_threshold(record: dict, scores: np.ndarray, is_defect: np.ndarray, target_recall: float) -> dict:
    """A run's reject threshold from its validation scores, and how it was chosen (the bundle card's
    `threshold`): a good-only run (RUN/config.json `record`) from its good parts alone."""
    budget = record.get("max_false_rejects", FALSE_REJECT_BUDGET)
    if record.get("good_only"):
        return {"value": good_quantile(scores[~is_defect], budget), "chosen_on": "val", "method": GOOD_ONLY_METHOD,
                "max_false_rejects": budget}
    value = choose_threshold(scores, is_defect, target_recall, budget)
    return {"value": value, "chosen_on": "val", "method": THRESHOLD_METHOD, "target_recall": target_recall,
            "max_false_rejects": budget, "recall_interval": recall_interval(scores, is_defect, value)}


def recall_at_false_rejects(scores: np.ndarray, is_defect: np.ndarray, share: float) -> float:
    """The defect recall of the lowest threshold that rejects at most `share` of the good parts."""
    goods = np.sort(scores[~is_defect])[::-1]
    above = goods[min(int(np.floor(share * len(goods))), len(goods) - 1)]
    return float((scores[is_defect] > above).mean())


def recall_interval(scores: np.ndarray, is_defect: np.ndarray, threshold: float, confidence: float = 0.95) -> list[float]:
    """The defect recall a split can vouch for at `threshold`: the exact (Clopper-Pearson) interval around the
    share of its defects scored at or above it. 59 defects all caught support no more than 0.939 at 95 %."""
    from scipy.stats import binomtest

    defects = scores[is_defect]
    if len(defects) == 0:
        raise TrainingError("no defective parts in the split: cannot say what recall a threshold gives")
    ci = binomtest(int((defects >= threshold).sum()), len(defects)).proportion_ci(confidence, method="exact")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def decision_report(rejected: np.ndarray, is_defect: np.ndarray) -> dict:
    """Defect-vs-good figures of a set of reject decisions."""
    p, r, f1, _ = skm.precision_recall_fscore_support(is_defect, rejected, average="binary", zero_division=0)
    return {
        "accuracy": float(skm.accuracy_score(is_defect, rejected)),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f1),
        "false_reject_rate": float(rejected[~is_defect].mean()) if (~is_defect).any() else 0.0,
        "escape_rate": float((~rejected[is_defect]).mean()) if is_defect.any() else 0.0,
    }


def binary_report(scores: np.ndarray, is_defect: np.ndarray, threshold: float) -> dict:
    return {"threshold": float(threshold), **decision_report(scores >= threshold, is_defect)}


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> float:
    """Share of defect images whose heatmap peak falls inside the defect mask. The map is coarse (one
    cell per 32 px of input), so its peak is a cell: a hit is a mask that touches the peak cell."""
    hits = []
    for m, mask in zip(maps, masks):
        if not mask.any():
            continue  # some real datasets have empty masks for defect images
        (h, w), (H, W) = m.shape, mask.shape
        iy, ix = np.unravel_index(int(np.argmax(m)), m.shape)
        cell = mask[iy * H // h:(iy + 1) * H // h, ix * W // w:(ix + 1) * W // w]
        hits.append(bool(cell.any()))
    return float(np.mean(hits)) if hits else float("nan")


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """RGB image with a jet heatmap (values 0..1, any resolution) blended over it."""
    heat = cv2.resize(heat.astype(np.float32), image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), cv2.COLORMAP_JET)[..., ::-1]
    return cv2.addWeighted(image, 0.55, colour, 0.45, 0)


def _predict(cam_model, x: np.ndarray, batch: int = 64):
    probs, cams = cam_model.predict(x.astype(np.float32), batch_size=batch, verbose=0)
    return probs, cams


def _photo_outputs(cam_model, ds, split: str, size: int, tiling, good: int, with_masks: bool = False):
    """Per photo of a split: (the view the model decided on, its mask, the photo's label, the probabilities,
    the activation map); on tiles, each photo's worst tile, as the box decides."""
    views = data.load_views(ds, split, size, tiling, with_masks)
    probs, cams = _predict(cam_model, views.x)
    probs, pick = worst(probs, views.owner, len(views.labels), good)
    return views.x[pick], None if views.masks is None else views.masks[pick], views.labels, probs, cams[pick]


def _report_html(m: dict, pngs: dict[str, Path], out: Path) -> None:
    def table(rows: dict) -> str:
        return "<table>" + "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{v:.4f}</td></tr>" if isinstance(v, float)
            else f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows.items()) + "</table>"

    per_class = "".join(
        f"<tr><th>{html.escape(c)}</th><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
        f"<td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>" for c, v in m["per_class"].items())
    figures = "".join(f"<figure><img src='{png_data_uri(p)}'><figcaption>{html.escape(k)}</figcaption></figure>"
                      for k, p in pngs.items())
    thr = m["threshold"]
    test = (f"On the {m['split']} split it catches <b>{100 * thr['test']['recall']:.2f}%</b> of defective parts and "
            f"rejects <b>{100 * thr['test']['false_reject_rate']:.2f}%</b> of good parts.")
    if m.get("good_only"):
        chosen = (f"chosen on the validation split's {thr['val_goods']} good parts to reject at most "
                  f"{100 * thr['max_false_rejects']:g}% of them ({html.escape(thr['method'])}). {test}")
        found = m.get("recall_by_kind")
        if found:
            chosen += " Found of each kind of defect: " + ", ".join(
                f"{html.escape(k)} {100 * v:.0f}%" for k, v in found.items()) + "."
    else:
        chosen = (f"chosen on the validation split for a defect recall of {thr['target_recall']:.3f} and at most "
                  f"{100 * thr['max_false_rejects']:g}% false rejects spent on it ({html.escape(thr['method'])}). "
                  f"{test} The validation split's {thr['val_defects']} defects vouch for a recall between "
                  f"<b>{thr['recall_interval'][0]:.3f}</b> and {thr['recall_interval'][1]:.3f} at this threshold "
                  "(95 %, exact binomial interval): more validation defects narrow it.")
    trained = " The model was trained on good parts only." if m.get("good_only") else ""
    body = f"""<h1>Evaluation of {html.escape(m['run'])}</h1>
<p>Dataset {html.escape(m['dataset'])}, split <b>{m['split']}</b>, {m['n']} images, classes {html.escape(', '.join(m['classes']))}.{trained}</p>
<p class="big">Reject when defect score &ge; <b>{thr['value']:.4f}</b>, {chosen}</p>
<h2>Defect vs good</h2><h3>at the chosen threshold</h3>{table(thr['test'])}
<h3>at the most likely class (argmax)</h3>{table(m['binary_argmax'])}
{table({'ROC AUC': m['roc_auc'], 'PR AUC': m['pr_auc'], 'pointing game hit rate': m.get('pointing_game', {}).get('hit_rate', float('nan'))})}
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{per_class}</table>
<h2>Figures</h2>{figures}"""
    out.write_text(page(f"Evaluation: {m['run']}", body))


def evaluate(run: Path, data_dir: Path, split: str = "test", target_recall: float = TARGET_RECALL,
             worst: int = 12) -> dict:
    run = Path(run)
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else None
    net = models.load(run)
    if cfg is None:
        raise TrainingError(f"{run}: no config.json beside model.keras")
    ds = data.scan(data_dir, seed=cfg["seed"], skip_bad=cfg.get("skip_bad", False), good_only=cfg.get("good_only", False))
    if ds.classes != cfg["classes"]:
        raise TrainingError(f"the model was trained on classes {cfg['classes']}, but {data_dir} has classes {ds.classes}")
    size, tiling, good = net.input.shape[1], recipe.run_tiling(cfg), ds.class_index[GOOD]
    cam_model = models.with_cam(net)
    _, _, y_val, val_probs, _ = _photo_outputs(cam_model, ds, "val", size, tiling, good)
    x, masks, y, probs, cams = _photo_outputs(cam_model, ds, split, size, tiling, good, with_masks=True)
    val_scores = defect_scores(val_probs, good)
    scores = defect_scores(probs, good)
    is_defect = y != good
    both = bool(0 < is_defect.sum() < len(is_defect))
    thr = pick_threshold(cfg, val_scores, y_val != good, target_recall)
    threshold = thr["value"]
    out = run / "eval"
    out.mkdir(exist_ok=True)
    labels = list(range(len(ds.classes)))
    pred = probs.argmax(1)
    cm = skm.confusion_matrix(y, pred, labels=labels)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    m = {
        "run": str(run), "dataset": str(data_dir), "split": split, "n": int(len(y)), "classes": ds.classes,
        "good_only": bool(cfg.get("good_only")),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "macro_f1": float(np.mean(f)),
        # argmax decides "defect" when p(good) is not the largest class score
        "binary_argmax": {"threshold": "argmax", **decision_report(pred != good, is_defect)},
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(ds.classes)},
        "confusion_matrix": cm.tolist(),
        "roc_auc": float(skm.roc_auc_score(is_defect, scores)) if both else None,
        "pr_auc": float(skm.average_precision_score(is_defect, scores)) if both else None,
        "threshold": thr | {"val_defects": int((y_val != good).sum()), "val_goods": int((y_val == good).sum()),
                            "val": binary_report(val_scores, y_val != good, threshold),
                            "test": binary_report(scores, is_defect, threshold)},
    }
    if both:  # the figures a good-only model is compared by: recall where the test's own goods allow 1 and 3 %
        m["recall_at_false_rejects"] = {f"{share:.2f}": recall_at_false_rejects(scores, is_defect, share)
                                        for share in (0.01, 0.03)}
    kinds = [it.kind for it in ds.split(split)]
    if any(kinds):  # good-only on a labelled dataset: what it found of each kind of real defect
        m["recall_by_kind"] = {k: float((scores[np.array(kinds) == k] >= threshold).mean())
                               for k in sorted(set(kinds) - {None})}
    maps = np.stack([defect_map(c, good) for c in cams])
    with_mask = is_defect & masks.reshape(len(masks), -1).any(1)
    if with_mask.any():
        m["pointing_game"] = {"hit_rate": pointing_game(maps[with_mask], masks[with_mask]),
                              "images": int(with_mask.sum()), "map_size": list(maps.shape[1:]),
                              "hit": "the defect mask touches the map's peak cell"}
    pngs = {"confusion matrix": plots.confusion(cm, ds.classes, out / "confusion.png")}
    if both:
        fpr, tpr, _ = skm.roc_curve(is_defect, scores)
        prec, rec, _ = skm.precision_recall_curve(is_defect, scores)
        pngs["ROC curve"] = plots.curve(fpr, tpr, "false reject rate", "defect recall", f"ROC (AUC {m['roc_auc']:.3f})",
                                        out / "roc.png", diagonal=True)
        pngs["PR curve"] = plots.curve(rec, prec, "defect recall", "precision", f"PR (AP {m['pr_auc']:.3f})",
                                       out / "pr.png")
    pngs["score histogram"] = plots.score_histogram(scores, is_defect, threshold, out / "scores.png")
    if (run / "training-curves.png").exists():
        pngs["training curves"] = run / "training-curves.png"
    # worst mistakes: defects with the lowest scores and good parts with the highest, with their maps
    wrong = np.where((scores >= threshold) != is_defect)[0]
    order = wrong[np.argsort(-np.abs(scores[wrong] - threshold))][:worst]
    if len(order):
        pngs["worst mistakes"] = plots.gallery(
            [overlay(x[i], maps[i]) for i in order],
            [f"{ds.classes[y[i]]} {'rejected' if scores[i] >= threshold else 'passed'} (argmax {ds.classes[pred[i]]})"
             f"\nscore {scores[i]:.3f}, threshold {threshold:.3f}" for i in order],
            out / "worst.png")
    (out / "metrics.json").write_text(json.dumps(m, indent=1))
    _report_html(m, pngs, out / "report.html")
    return m


def explain(run: Path, images: list[Path], out: Path) -> list[Path]:
    """Write a heatmap overlay per image: where the model sees a defect (on tiles, over the whole photo)."""
    net = models.load(run)
    record = json.loads((Path(run) / "config.json").read_text())
    classes, tiling = record["classes"], recipe.run_tiling(record)
    good = classes.index(GOOD)
    cam_model = models.with_cam(net)
    size = net.input.shape[1]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        img = data.read_rgb(path)
        if tiling:
            views, at = tiles.cut(img, tiling.size, tiling.overlap)
        else:
            img = resize(img, (size, size), "area")
            views, at = img[None], [(0, 0)]
        probs, cams = _predict(cam_model, views)
        heat = np.zeros(np.maximum(img.shape[:2], views.shape[1:3]), np.float32)
        for (x0, y0), cam in zip(at, cams):  # each tile's map at its place; overlaps keep the higher
            m = cv2.resize(defect_map(cam, good), views.shape[2:0:-1], interpolation=cv2.INTER_LINEAR)
            heat[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = np.maximum(heat[y0:y0 + m.shape[0], x0:x0 + m.shape[1]], m)
        top, _ = worst(probs, np.zeros(len(probs), int), 1, good)
        vis = overlay(img, heat[:img.shape[0], :img.shape[1]])
        scale = 256 / max(vis.shape[:2])
        vis = cv2.resize(vis, (round(vis.shape[1] * scale), round(vis.shape[0] * scale)), interpolation=cv2.INTER_NEAREST)
        cv2.putText(vis, f"{classes[int(top[0].argmax())]} {float(defect_scores(top[0], good)):.2f}", (4, 16),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        dst = out / f"{Path(path).stem}_cam.png"
        cv2.imwrite(str(dst), vis[..., ::-1])
        written.append(dst)
    return written
