"""audit.json (every finding, machine-readable) and audit.html (one self-contained page: inline SVG, no assets)."""

from __future__ import annotations

import html
from pathlib import Path

from dlforge.core.files import write_json, write_text
from dlforge.report.html import STYLE
from dlforge.report.svg import bar_chart

PAGE_STYLE = STYLE + "\nli{margin:.2em 0}.ok{color:#2ca02c}.bad{color:#d62728}"


def _rows(header: list[str], rows: list[list]) -> str:
    if not rows:
        return "<p class='ok'>none</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(title: str, body: str, anchor: str) -> str:
    return f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{body}</section>"


def render(f: dict) -> str:
    e = html.escape
    splits = ", ".join(f"{p} {n:,}" for p, n in f["splits"].items() if n)
    parts = [f"<p>source: <b>{e(str(f['source']))}</b> · target: <b>{e(f['target'])}</b> ({e(f['task'])}) · "
             f"rows: {f['rows']:,} ({e(splits)}; split: {e(f['split_source'])})"
             + (f" · {f['rows_without_target']:,} row(s) without a target" if f["rows_without_target"] else "")
             + "</p>",
             "<ul>" + "".join(f"<li>{e(line)}</li>" for line in f["summary"]) + "</ul>"]
    out = [_section("Summary", "".join(parts), "summary")]

    balance = f.get("class_balance")
    body = bar_chart(balance, title="rows per class", xlabel="rows") if balance else "<p>number target</p>"
    if f.get("single_row_classes"):
        body += f"<p class='bad'>classes with a single row: {e(', '.join(f['single_row_classes'][:20]))}</p>"
    out.append(_section("Class balance", body, "balance"))

    missing = {n: c.get("missing", 0) for n, c in f["columns"].items()}
    body = bar_chart({n: m for n, m in sorted(missing.items(), key=lambda kv: -kv[1]) if m},
                     title="missing values per column", xlabel="rows") if any(missing.values()) else \
        "<p class='ok'>no missing values</p>"
    body += _rows(["column", "kind", "missing"], [[n, c["kind"], c.get("missing", 0)] for n, c in f["columns"].items()])
    out.append(_section("Columns and missing values", body, "columns"))

    body = ("<h3>Leaky (alone predict the target)</h3>"
            + _rows(["column", "metric", "score"], [[c["column"], c["metric"], c["score"]] for c in f["leaky_columns"]])
            + "<h3>Constant</h3>" + _rows(["column", "why"], [[c["column"], c["why"]] for c in f["constant_columns"]])
            + "<h3>ID-like</h3>" + _rows(["column", "why"], [[c["column"], c["why"]] for c in f["id_like_columns"]]))
    out.append(_section("Constant, ID-like and leaky columns", body, "leaks"))

    d = f["duplicates"]
    cross = d["cross_split"]
    body = (f"<p>near twins: {e(d['near_method'])}</p>"
            + _rows(["kind", "groups", "extra rows", "with conflicting labels", "example groups (rows)"],
                    [[k, d[k]["groups"], d[k]["extra_rows"], d[k]["conflicting_labels"],
                      "; ".join(str(g) for g in d[k]["examples"][:5])] for k in ("exact", "near")])
            + "<h3>Across splits (train/test leakage)</h3>"
            + (f"<p class='bad'>{cross['rows']:,} val/test row(s) with a twin in another split: "
               f"{e(', '.join(f'{k} {v}' for k, v in cross['by_splits'].items()))}; rows "
               f"{e(str(cross['leaked_rows'][:30]))}</p>" if cross["rows"] else "<p class='ok'>none</p>")
            + (f"<p>{e(d['note'])}</p>" if d.get("note") else ""))
    out.append(_section("Duplicates", body, "duplicates"))

    o = f["outliers"]
    body = f"<p>{e(o['method'])}</p>" + _rows(["column", "rows beyond |z| 3.5", "example rows"],
                                              [[n, c["rows"], c["examples"]] for n, c in o["columns"].items()])
    forest = o.get("isolation_forest")
    if forest:
        body += (f"<p>IsolationForest: {forest['rows']:,} unusual row(s); the most anomalous:</p>"
                 + _rows(["row", "score"], [[r["row"], r["score"]] for r in forest["most_anomalous"][:10]]))
    out.append(_section("Outliers", body, "outliers"))

    labels = f.get("label_errors", {})
    if "skipped" in labels:
        body = f"<p>skipped: {e(labels['skipped'])}</p>"
    else:
        body = (f"<p>{e(labels['model'])}; out-of-fold accuracy {labels['out_of_fold_accuracy']:.3f}. "
                f"{labels['count']:,} likely error(s) in {labels['rows_checked']:,} rows ({labels['share']:.1%}), "
                "least confident first:</p>"
                + _rows(["row", "given", "suggested", "model's confidence in the given label", "file"],
                        [[x["row"], x["given"], x["suggested"], x["confidence_in_given"], x.get("file", "")]
                         for x in labels["examples"]]))
    out.append(_section("Likely label errors (confident learning)", body, "labels"))

    planted = f.get("planted")
    if planted:
        rows = [[name.replace("_", " "), p["planted"], p["found"], f"{p['recall']:.1%}", f"{p['precision']:.1%}",
                 p.get("flagged_new", "")] for name, p in planted.items() if isinstance(p, dict)]
        body = (f"<p>{e(planted['how'])}</p>"
                + _rows(["planted problem", "planted", "found", "recall", "precision", "new findings"], rows)
                + bar_chart({r[0]: float(r[3].rstrip('%')) for r in rows}, title="recall on planted problems (%)",
                            xlabel="% found"))
        out.append(_section("The audit's own recall on this data", body, "planted"))

    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in f.get("seconds", {}).items())
    title = f"dlforge audit · {Path(str(f['source'])).name}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{PAGE_STYLE}</style>"
            f"</head><body><h1>{e(title)}</h1>{''.join(out)}<p><small>time: {e(seconds)}</small></p></body></html>")


def write_audit(out: Path, findings: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "audit.json", findings, nonfinite="null")
    write_text(out / "audit.html", render(findings))
