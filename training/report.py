"""Model 2 evaluation report: PNG plots (ROC, PR, calibration, decision curve) and one HTML page."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

PLOTS = ("roc.png", "pr.png", "calibration.png", "decision_curve.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_all(summary: dict, probs: dict, y: np.ndarray, out_dir: Path) -> list[Path]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _plt()
    out_dir = Path(out_dir)
    mods = summary["modules"]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 6))
    for name, p in probs.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {mods[name]['auc']['value']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, held-out test set")
    ax.legend(fontsize=7, loc="lower right")
    paths.append(_save(fig, out_dir / "roc.png"))

    fig, ax = plt.subplots(figsize=(6, 6))
    for name, p in probs.items():
        prec, rec, _ = precision_recall_curve(y, p)
        ax.plot(rec, prec, label=f"{name} (AP {mods[name]['average_precision']['value']:.3f})")
    ax.axhline(float(np.mean(y)), color="k", ls=":", lw=1)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, held-out test set")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "pr.png"))

    fig, ax = plt.subplots(figsize=(6, 6))
    for name in probs:
        rel = mods[name]["reliability"]
        ax.plot(rel["predicted"], rel["observed"], "o-", ms=3,
                label=f"{name} (Brier {mods[name]['calibration']['brier']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="mean predicted probability", ylabel="observed expansion rate", title="Reliability (deciles)",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "calibration.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    first = None
    for name in probs:
        dc = mods[name]["decision_curve"]
        first = first or dc
        ax.plot(dc["thresholds"], dc["model"], label=name)
    if first:
        ax.plot(first["thresholds"], first["treat_all"], "k--", lw=1, label="treat all")
        ax.plot(first["thresholds"], first["treat_none"], "k:", lw=1, label="treat none")
        ax.set_ylim(-0.05, max(0.05, float(np.mean(y))) + 0.05)
    ax.set(xlabel="threshold probability", ylabel="net benefit", title="Decision curve")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "decision_curve.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _ci(m: dict) -> str:
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} <small>({lo:.3f}–{hi:.3f})</small>"


def table2_rows(summary: dict) -> list[dict]:
    """The seed's Table 2 columns, one row per module (also used for docs)."""
    rows = []
    for name, m in summary["modules"].items():
        cm = m["confusion"]
        rows.append({"module": name, "AUC": m["auc"]["value"], "AUC_CI": m["auc"]["ci95"],
                     "precision": m["precision"]["value"], "recall": m["recall"]["value"],
                     "AP": m["average_precision"]["value"], **cm, "brier": m["calibration"]["brier"]})
    return rows


def write_html(summary: dict, out_dir: Path) -> Path:
    e = html.escape
    mods = summary["modules"]
    rows = []
    for name, m in mods.items():
        cm, cal = m["confusion"], m["calibration"]
        rows.append(
            f"<tr><td>{e(name)}</td><td>{_ci(m['auc'])}</td><td>{_ci(m['precision'])}</td><td>{_ci(m['recall'])}</td>"
            f"<td>{_ci(m['specificity'])}</td><td>{_ci(m['average_precision'])}</td>"
            f"<td>{cm['TP']}</td><td>{cm['FP']}</td><td>{cm['FN']}</td><td>{cm['TN']}</td>"
            f"<td>{m['threshold']:.3f}</td><td>{_ci(m['brier'])}</td><td>{cal['slope']:.2f}</td>"
            f"<td>{cal['intercept']:.2f}</td><td>{m.get('cv_auc_train', float('nan')):.3f}</td></tr>")
    delong = "".join(
        f"<tr><td>{e(k)}</td><td>{v['diff']:+.3f}</td><td>{v['z']:.2f}</td><td>{v['p']:.3g}</td></tr>"
        for k, v in summary["delong"].items())
    details = "".join(
        f"<li><b>{e(n)}</b>: {e(str(m.get('best_params')))}; {len(m.get('selected_features', []))} features: "
        f"{e(', '.join(m.get('selected_features', [])))}</li>" for n, m in mods.items() if m.get("kind") == "fusion")
    imgs = "".join(f'<img src="{p}" style="max-width:48%">' for p in PLOTS)
    tr, te = summary["train"], summary["test"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Model 2 evaluation</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:auto}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #bbb;padding:3px 6px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>Hematoma-expansion classifier (model 2): evaluation</h1>
<p><b>{e(summary['note'])}</b> Research use only.</p>
<p>Cohort {e(summary['cohort'])}; training {tr['cases']} cases ({tr['positives']} expanders), held-out test
{te['cases']} cases ({te['positives']} expanders); split seed {summary['seed']}. Everything (feature selection,
hyper-parameters, calibration, threshold, CNN warm-up) was chosen on the training split only.
Module selected for shipping by training cross-validation AUC: <b>{e(str(summary.get('selected_by_train_cv')))}</b>.</p>
<h2>Table 2 (test set), 95 % stratified-bootstrap CIs</h2>
<table><tr><th>module</th><th>AUC</th><th>precision</th><th>recall</th><th>specificity</th><th>AP</th>
<th>TP</th><th>FP</th><th>FN</th><th>TN</th><th>threshold</th><th>Brier</th><th>cal. slope</th><th>cal. intercept</th>
<th>train CV AUC</th></tr>{''.join(rows)}</table>
<h2>DeLong tests (test set, two-sided)</h2><table><tr><th>pair</th><th>ΔAUC</th><th>z</th><th>p</th></tr>{delong}</table>
<h2>Plots</h2>{imgs}
<h2>Selected models</h2><ul>{details}</ul></body></html>"""
    path = Path(out_dir) / "report.html"
    path.write_text(page)
    return path


def write_report(summary: dict, probs: dict, y: np.ndarray, out_dir: Path) -> Path:
    plot_all(summary, probs, y, out_dir)
    return write_html(summary, out_dir)
