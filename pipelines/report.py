"""The run report: one self-contained HTML page of what a run decided and why.

`render(summary)` turns the run summary (pipelines/summary.py, `summary.json`) into HTML: the gate
decision with every check's value and threshold, AUC and loss per epoch (with the Bayes-optimal AUC
of generated data), per-table embedding sparsity, the evaluation, the push (sizes before/after,
parity, version), and the ingestion counts with the quarantine's location. Plots are PNGs drawn with
matplotlib (Agg) and embedded as data: URIs, so the file opens anywhere: from `<output>/report.html`
after `python -m pipelines run`, and in the Kubeflow Pipelines UI as the `RunReport` step's HTML
artifact (pipelines/report_step.py).

A small inline script counts, once the page has loaded, the plots the browser decoded
(`<body data-plots-loaded=N data-plots-broken=M>`); the tests read it back from headless Chromium.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence

REPORT_FILE = "report.html"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return _e(value)


def _mb(n: Optional[float]) -> str:
    return "n/a" if n is None else f"{n / 1e6:.3f} MB"


# -- plots -----------------------------------------------------------------------------------------
def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: Dict[str, Sequence[float]], bayes_auc: Optional[float] = None,
                 best_epoch: Optional[int] = None) -> Optional[str]:
    """AUC and log loss per epoch (train and eval split), base64 PNG; None without a history."""
    if not history or not any(history.get(k) for k in ("auc", "val_auc", "loss", "val_loss")):
        return None
    plt = _pyplot()
    fig, (ax_auc, ax_loss) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    for ax, keys, title in ((ax_auc, ("auc", "val_auc"), "AUC"), (ax_loss, ("loss", "val_loss"), "log loss")):
        for key, label, style in ((keys[0], "train", "o-"), (keys[1], "eval split", "s-")):
            values = history.get(key) or []
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=label)
        ax.set_title(f"{title} per epoch")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if bayes_auc is not None:
        ax_auc.axhline(bayes_auc, color="tab:green", linestyle="--", label=f"Bayes-optimal {bayes_auc:.4f}")
    if best_epoch:
        for ax in (ax_auc, ax_loss):
            ax.axvline(best_epoch, color="grey", linestyle=":", label="kept epoch")
    epochs = max(len(history.get(k) or []) for k in ("auc", "val_auc", "loss", "val_loss"))
    for ax in (ax_auc, ax_loss):
        ax.set_xticks(range(1, epochs + 1))
        ax.legend(fontsize=8)
    return _png(fig)


def _table_order(name: str):
    digits = "".join(c for c in name if c.isdigit())
    return (name.rstrip("0123456789"), int(digits) if digits else -1, name)


def plot_sparsity(tables: Dict[str, Dict[str, Any]], threshold: Optional[float] = None,
                  per_table: Optional[Dict[str, float]] = None) -> Optional[str]:
    """Fraction of all-zero embedding rows per table (bar chart), base64 PNG; None without tables."""
    if not tables:
        return None
    plt = _pyplot()
    names = sorted(tables, key=_table_order)
    fractions = [float(tables[n].get("fraction") or 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 1.5), 3.2))
    ax.bar(range(len(names)), fractions, color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("zero rows / rows")
    ax.set_title("embedding-row sparsity per table")
    if threshold:
        ax.axhline(threshold, color="tab:red", linestyle="--", label=f"gate min_sparsity {threshold:.2f}")
        ax.legend(fontsize=8)
    for i, name in enumerate(names):
        if per_table and name in per_table:
            ax.plot([i - 0.4, i + 0.4], [per_table[name]] * 2, color="tab:red")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


# -- sections --------------------------------------------------------------------------------------
def _rows(pairs: Sequence[Sequence[Any]]) -> str:
    return "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in pairs)


def _table(head: Optional[Sequence[str]], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head_html = "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>" if head else ""
    return f'<table class="{cls}">{head_html}<tbody>{_rows(rows)}</tbody></table>'


def _img(b64: Optional[str], alt: str) -> str:
    if not b64:
        return f"<p class=muted>no data for: {_e(alt)}</p>"
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _gates_section(summary: Dict[str, Any]) -> str:
    gates = summary.get("gates")
    if not gates:
        return "<h2>Gates</h2><p class=muted>The run stopped before the gates.</p>"
    blessed = bool(gates.get("blessed"))
    rows = []
    for name, g in (gates.get("gates") or {}).items():
        comparison = g.get("comparison", ">=")  # model_bytes: "<="
        if not g.get("passed"):
            comparison = {">=": "<", "<=": ">"}.get(comparison, comparison)
        extra = ""
        if "baseline" in g:
            extra = f" (baseline {_num(g.get('baseline'))})"
        rows.append([_e(name), _num(g.get("value")) + extra, f"{_e(comparison)} {_num(g.get('threshold'))}",
                     f'<span class="{"pass" if g.get("passed") else "fail"}">{"PASS" if g.get("passed") else "FAIL"}</span>'])
    serving = gates.get("serving_check") or {}
    for name, check in (serving.get("checks") or {}).items():  # ServingCheck: measured <= limit
        passed = check.get("passed")
        value = check.get("value")
        rows.append([f"serving check: {_e(name)}", "n/a" if value is None else _e(f"{float(value):.4g}"),
                     f"{_e('<=' if passed else '>')} {_e(check.get('limit'))}",
                     f'<span class="{"pass" if passed else "fail"}">{"PASS" if passed else "FAIL"}</span>'])
    verdict = "BLESSED" if blessed else "NOT BLESSED"
    return (f'<h2>Gates: <span class="{"pass" if blessed else "fail"}" id="decision">{verdict}</span></h2>'
            f"<p>{_e(gates.get('reason', ''))}; the Evaluator "
            f"{'blessed' if gates.get('evaluator_blessed') else 'did not bless'} the model.</p>"
            + _table(["check", "value", "threshold", "verdict"], rows, "gates"))


def _training_section(summary: Dict[str, Any], plots: Dict[str, str]) -> str:
    tr = summary.get("training")
    if not tr:
        return "<h2>Training</h2><p class=muted>No model was trained in this run.</p>"
    history = tr.get("history") or {}
    early = tr.get("early_stopping") or {}
    plots["history"] = plot_history(history, summary.get("bayes_auc"), early.get("best_epoch"))
    epochs = max([len(v) for v in history.values()] or [0])
    rows = []
    for i in range(epochs):
        rows.append([str(i + 1)] + [_num((history.get(k) or [None] * epochs)[i] if i < len(history.get(k) or []) else None)
                                    for k in ("auc", "val_auc", "loss", "val_loss")])
    warm = tr.get("warm_start") or {}
    start = (f"warm start from {_e(warm.get('pushed_model') or 'the pushed model')}: "
             f"{_num(warm.get('rows_carried'))} embedding rows carried, {_num(warm.get('rows_new'))} new"
             if warm.get("restored") else f"cold start ({_e(warm.get('reason', 'no pushed model'))})")
    kept = ""
    if early.get("best_epoch"):
        kept = f"; kept epoch {early['best_epoch']} of {early.get('epochs_run', epochs)} ({_e(early.get('monitor'))})"
    bayes = ""
    if summary.get("bayes_auc") is not None:
        bayes = (f'<p>Generated data: Bayes-optimal AUC <b id="bayes-auc">{_num(summary["bayes_auc"])}</b>, '
                 f"log loss {_num(summary.get('bayes_logloss'))} (the planted truth's own scores).</p>")
    return ("<h2>Training</h2>"
            f"<p>{_e(tr.get('model'))} with {_e(tr.get('optimizer'))}, {_num(tr.get('steps'))} steps, "
            f"{_num(tr.get('epochs'))} epochs in {_num(tr.get('fit_seconds'), 1)} s{kept}; {start}.</p>"
            + bayes + _img(plots["history"], "AUC and loss per epoch")
            + _table(["epoch", "train AUC", "eval AUC", "train loss", "eval loss"], rows, "history"))


def _sparsity_section(summary: Dict[str, Any], plots: Dict[str, str]) -> str:
    sp = ((summary.get("training") or {}).get("sparsity")) or {}
    if not sp:
        return ""
    gates = (summary.get("gates") or {}).get("gates") or {}
    threshold = (gates.get("sparsity") or {}).get("threshold")
    per_table = {name[len("sparsity_"):]: g.get("threshold") for name, g in gates.items()
                 if name.startswith("sparsity_") and g.get("threshold") is not None}
    tables = sp.get("tables") or {}
    plots["sparsity"] = plot_sparsity(tables, threshold, per_table)
    rows = [[_e(n), _num(t.get("rows")), _num(t.get("zero_rows")), f"{float(t.get('fraction') or 0):.1%}"]
            for n, t in sorted(tables.items(), key=lambda kv: _table_order(kv[0]))]
    return ("<h2>Embedding sparsity</h2>"
            f"<p>{float(sp.get('fraction') or 0):.1%} of all embedding rows are zero "
            f"({_num(sp.get('zero_rows'))} of {_num(sp.get('rows'))}).</p>"
            + _img(plots["sparsity"], "embedding-row sparsity per table")
            + "<details><summary>per table</summary>"
            + _table(["table", "rows", "zero rows", "sparsity"], rows, "sparsity") + "</details>")


def _evaluation_section(summary: Dict[str, Any]) -> str:
    ev = summary.get("evaluation")
    if not ev:
        return ""
    names = [k for k in ("auc", "binary_crossentropy", "calibration", "mean_prediction", "mean_label",
                         "example_count") if k in ev]
    def value(k, v):
        return _num(int(v)) if k == "example_count" and v is not None else _num(v)
    rows = [[_e(k), value(k, ev[k]), value(k, ev.get("baseline_" + k)), _num(ev.get(k + "_diff_vs_baseline"))]
            for k in names]
    return "<h2>Evaluation (eval split)</h2>" + _table(["metric", "model", "baseline", "difference"], rows, "evaluation")


def _push_section(summary: Dict[str, Any]) -> str:
    push = summary.get("push")
    if not push:
        return ""
    if not push.get("pushed"):
        return f"<h2>Push</h2><p class=fail>Not pushed: {_e(push.get('reason', 'model not blessed'))}</p>"
    rows = [["version", _e(push.get("version"))], ["path", f"<code>{_e(push.get('path'))}</code>"],
            ["trained model", _mb(push.get("size_before_bytes"))],
            ["pushed model", _mb(push.get("size_after_bytes", push.get("size_bytes")))],
            ["embeddings", f"{_mb(push.get('embedding_bytes_before'))} &rarr; {_mb(push.get('embedding_bytes_after'))}"],
            ["embedding rows dropped", f"{_num(push.get('embedding_rows_dropped'))} of {_num(push.get('embedding_rows'))}"],
            ["tables compacted", _num(push.get("compacted_tables"))],
            ["parity max |error|", _e(f"{float(push.get('parity_max_abs_error') or 0):.3g}")],
            ["warmup requests", _num(push.get("warmup_requests"))]]
    if push.get("models_config"):
        rows.append(["models.config", f"<code>{_e(push['models_config'])}</code>"])
    return "<h2>Push</h2>" + _table(None, rows, "push")


def _ingestion_section(summary: Dict[str, Any]) -> str:
    ing = summary.get("ingestion")
    if not ing:
        return ""
    reasons = ing.get("quarantined_by_reason") or {}
    rows = [["rows read", _num(ing.get("rows_read"))], ["rows emitted", _num(ing.get("rows_emitted"))],
            ["rows quarantined", _num(ing.get("rows_quarantined"))]]
    rows += [[f"&nbsp;&nbsp;{_e(k)}", _num(v)] for k, v in sorted(reasons.items())]
    rows += [["quarantine", f"<code>{_e(ing.get('quarantine_uri'))}</code>"],
             ["span", _e(ing.get("span"))], ["data", f"<code>{_e(summary.get('data_root'))}</code>"],
             ["format", _e(summary.get("dataset_format"))]]
    negatives = ing.get("negative_ints_by_field") or {}
    if negatives:
        rows.append(["negative ints (clipped)", _e(", ".join(f"{k}={v}" for k, v in sorted(negatives.items())))])
    val = summary.get("validation")
    if val is not None:
        rows.append(["schema anomalies", _e(val.get("count")) + (
            ": " + _e("; ".join(f"{k} ({v})" for k, v in (val.get("anomalies") or {}).items())) if val.get("count") else "")])
    return "<h2>Ingestion</h2>" + _table(None, rows, "ingestion")


def _scores_section(summary: Dict[str, Any]) -> str:
    demo = summary.get("demo_scores")
    if not demo or "error" in demo:
        return ""
    rows = [[str(i), _num(p), _e(y)] for i, (p, y) in enumerate(zip(demo.get("rest", []), demo.get("labels", [])))]
    return (f"<h2>Scored through local TF Serving</h2><p>version {_e(demo.get('model_version'))}, REST and gRPC "
            "agreeing</p>" + _table(["row", "click probability", "label"], rows, "scores"))


_STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:14px} td,th{border:1px solid #ddd;padding:4px 10px;text-align:left}
th{background:#f5f5f5} .pass{color:#1a7f37;font-weight:bold} .fail{color:#cf222e;font-weight:bold}
.muted{color:#777} img.plot{max-width:100%;display:block;margin:8px 0} code{font-size:12px}
"""
# Counts the plots the browser could decode (tests read it back from headless Chromium).
_SCRIPT = """
window.addEventListener('load', function () {
  var ok = 0, broken = 0, imgs = document.querySelectorAll('img.plot');
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } else { broken++; }
  }
  document.body.setAttribute('data-plots-loaded', ok);
  document.body.setAttribute('data-plots-broken', broken);
});
"""


def render(summary: Dict[str, Any]) -> str:
    """The report of one run summary, as a self-contained HTML page."""
    plots: Dict[str, Optional[str]] = {}
    status = str(summary.get("status", "?")).upper()
    duration = f" in {summary['duration_s']:.0f} s" if isinstance(summary.get("duration_s"), (int, float)) else ""
    error = f'<p class="fail">error: {_e(summary["error"])}</p>' if summary.get("error") else ""
    sections = [_gates_section(summary), _training_section(summary, plots), _sparsity_section(summary, plots),
                _evaluation_section(summary), _push_section(summary), _ingestion_section(summary),
                _scores_section(summary)]
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>sparsectr run {_e(summary.get('run_id') or '')}: {status}</title>"
            f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>"
            f"<h1>sparsectr run {_e(summary.get('run_id') or '-')}: "
            f'<span class="{"pass" if status == "SUCCEEDED" else "fail"}" id="status">{status}</span>{duration}</h1>'
            + error + "".join(s for s in sections if s)
            + "<h2>Summary JSON</h2><details><summary>everything the run recorded</summary><pre>"
            + _e(json.dumps(summary, indent=1, sort_keys=True, default=str)) + "</pre></details>"
            + "</body></html>\n")


def write(summary: Dict[str, Any], path: str) -> str:
    """Writes the report atomically; returns the path."""
    text = render(summary)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def plots_in(text: str) -> List[bytes]:
    """The PNGs embedded in a report (decoded), in page order."""
    import re
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]
