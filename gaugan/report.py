"""The comparison report: ablation tables, plots and one static HTML page, from DataFrames.

The report compares runs the way the paper's ablation tables do (Park et al. 2019,
Tables 1-4 and Section 4: FID, mIoU and pixel accuracy per variant), adding speed and
training time. Runs arrive as a pandas DataFrame in the column layout of
``mlflow.search_runs`` (``run_id``, ``params.<key>``, ``metrics.<key>``, ``tags.<key>``)
and metric histories as a long DataFrame (``run_id``, ``key``, ``step``, ``value``); where
they come from (MLflow, or local files when tracking is off) is ``pipeline/``'s business.

Everything renders offline: plots are matplotlib PNGs (the Agg backend, no display), and
the HTML page inlines them as data URIs so it opens from any folder without internet.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from gaugan.data.io import atomic_write
from gaugan.methods import GENERATOR_NAMES
from gaugan.metrics.registry import registered_metrics


@dataclass(frozen=True)
class Headline:
    """A column of the ablation table: the MLflow metric it shows, scaled, and its JSON name."""

    label: str
    name: str  # key in reports/headline.json (what `dvc metrics show` / `dvc exp show` list)
    key: str  # MLflow metric
    scale: float  # applied to the logged value (seconds -> minutes)
    higher_is_better: bool | None  # None: not a quality measure (speed, time)
    digits: int


TRAINING_HEADLINES = (
    Headline("steps", "steps", "final/step", 1.0, None, 0),
    Headline("images/s", "images_per_s", "perf/images_per_s", 1.0, None, 1),
    Headline("train time (min)", "train_minutes", "time/train_seconds", 1 / 60, None, 1),
)


def headlines() -> tuple[Headline, ...]:
    """The table's metric columns: every registered evaluation metric (gaugan.metrics.registry),
    then training speed and time."""
    evaluation = tuple(Headline(metric.heading, metric.name, metric.tracking_key, 1.0, metric.higher_is_better,
                                metric.digits) for metric in registered_metrics())
    return evaluation + TRAINING_HEADLINES

# Parameters that never distinguish experiments (where things are written, logging), and the
# method, which has its own column.
IGNORED_PARAM_PREFIXES = ("tracking.", "train.log_every", "train.sample_every", "train.checkpoint_every", "method")


def experiment_labels(runs: pd.DataFrame) -> pd.Series:
    """A readable name per run: its DVC experiment; 'workspace' for a run made by plain
    `dvc repro` (a stage tag but no experiment name); else its run name or id."""
    label = pd.Series([None] * len(runs), index=runs.index, dtype=object)
    if "tags.dvc.exp_name" in runs.columns:
        label = label.fillna(runs["tags.dvc.exp_name"])
    if "tags.dvc.stage" in runs.columns:
        label = label.mask(label.isna() & runs["tags.dvc.stage"].notna(), "workspace")
    for column in ("tags.mlflow.runName", "run_name"):
        if column in runs.columns:
            label = label.fillna(runs[column])
    return label.fillna(runs["run_id"].astype(str).str[:8])


def run_methods(runs: pd.DataFrame) -> pd.Series:
    """The method of each run (SPADE, OASIS, "SPADE G + OASIS D", ...: gaugan.methods): its
    ``method`` parameter; for runs logged before that parameter, the generator family."""
    method = pd.Series([None] * len(runs), index=runs.index, dtype=object)
    if "params.method" in runs.columns:
        method = method.fillna(runs["params.method"])
    if "params.generator.arch" in runs.columns:
        method = method.fillna(runs["params.generator.arch"].map(GENERATOR_NAMES))
    return method.fillna("-")


def differing_params(runs: pd.DataFrame, ignore: Sequence[str] = IGNORED_PARAM_PREFIXES) -> list[str]:
    """The ``params.*`` keys (without the prefix) whose values differ between the runs."""
    keys = []
    for column in sorted(c for c in runs.columns if c.startswith("params.")):
        key = column[len("params."):]
        if any(key.startswith(prefix) for prefix in ignore):
            continue
        if runs[column].astype(str).nunique(dropna=False) > 1:
            keys.append(key)
    return keys


def headline_values(runs: pd.DataFrame) -> pd.DataFrame:
    """One column per :func:`headlines` entry (NaN where a run did not log it)."""
    columns = {}
    for headline in headlines():
        column = f"metrics.{headline.key}"
        values = pd.to_numeric(runs[column], errors="coerce") if column in runs.columns else pd.Series(
            np.nan, index=runs.index)
        columns[headline.label] = values * headline.scale
    return pd.DataFrame(columns, index=runs.index)


def headline_json(row: pd.Series) -> dict[str, float | None]:
    """One table row's headline numbers by JSON name, rounded as displayed; missing -> None."""
    values = {}
    for headline in headlines():
        value = row.get(headline.label)
        values[headline.name] = None if value is None or pd.isna(value) else round(float(value), headline.digits)
    return values


def ablation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: experiment, method, commit, the parameters that differ, headline metrics
    (every registered metric, the judge's ceiling among them, then steps, images/s, training time).

    Rows are ordered by start time (oldest first) so that a sweep reads in queue order.
    """
    if "start_time" in runs.columns:
        runs = runs.sort_values("start_time", kind="stable")
    table = pd.DataFrame({"experiment": experiment_labels(runs), "method": run_methods(runs)}, index=runs.index)
    commit = pd.Series([None] * len(runs), index=runs.index, dtype=object)
    for column in ("tags.dvc.exp_rev", "tags.dvc.baseline_rev", "tags.git.commit"):
        if column in runs.columns:
            commit = commit.fillna(runs[column])
    table["commit"] = commit.fillna("").astype(str).str[:7]
    table["run"] = runs["run_id"].astype(str).str[:8]
    if "status" in runs.columns and (runs["status"].fillna("FINISHED") != "FINISHED").any():
        table["status"] = runs["status"]  # failed or interrupted runs stay visible, marked
    for key in differing_params(runs):
        table[key] = runs[f"params.{key}"]
    table = pd.concat([table, headline_values(runs)], axis=1)
    return table.reset_index(drop=True)


def _cell(value: object, digits: int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if digits is not None and isinstance(value, (int, float, np.floating, np.integer)):
        return f"{float(value):.{digits}f}"
    return str(value)


def _formatted(table: pd.DataFrame) -> list[list[str]]:
    digits = {headline.label: headline.digits for headline in headlines()}
    return [[_cell(row[column], digits.get(column)) for column in table.columns] for _, row in table.iterrows()]


def table_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned, missing values as '-')."""
    header = [str(column) for column in table.columns]
    numeric = [pd.api.types.is_numeric_dtype(table[column]) for column in table.columns]
    rows = _formatted(table)
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731 - one-line helper
    lines = ["| " + " | ".join(escape(h) for h in header) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_html(table: pd.DataFrame, highlight_row: int | None = None) -> str:
    """The table as an HTML ``<table>``, the best value of each quality metric in bold."""
    best: dict[str, int] = {}
    for headline in headlines():
        values = table.get(headline.label)
        if headline.higher_is_better is None or values is None or values.notna().sum() < 2:
            continue
        best[headline.label] = int(values.idxmax() if headline.higher_is_better else values.idxmin())
    rows = _formatted(table)
    parts = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
             + "</tr></thead>", "<tbody>"]
    for index, row in enumerate(rows):
        cells = []
        for column, text in zip(table.columns, row):
            escaped = html.escape(text)
            cells.append(f"<td><b>{escaped}</b></td>" if best.get(column) == index else f"<td>{escaped}</td>")
        css = ' class="current"' if index == highlight_row else ""
        parts.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------
# Plots (matplotlib, offline).


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display, no internet: files only
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure, path: Path) -> None:
    atomic_write(path, lambda temp: figure.savefig(temp, dpi=100, bbox_inches="tight", format="png"))


def _placeholder(path: Path, message: str) -> None:
    """A small figure that says why there is no plot (the file always exists: DVC declares it)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 1.2))
    axis.axis("off")
    axis.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, wrap=True)
    _save_figure(figure, path)
    plt.close(figure)


def plot_loss_curves(history: pd.DataFrame, labels: dict[str, str], path: Path, prefix: str = "loss/") -> bool:
    """One panel per ``prefix*`` metric, one line per run. Returns False (and writes a
    placeholder saying so) when no run logged such a metric."""
    keys = sorted(key for key in history["key"].unique() if key.startswith(prefix)) if len(history) else []
    return plot_curves(history, labels, path, keys,
                       f"no {prefix}* metrics were logged (tracking off, or no training run)")


def plot_curves(history: pd.DataFrame, labels: dict[str, str], path: Path, keys: Sequence[str],
                empty_message: str) -> bool:
    """One panel per metric of ``keys`` against the step, one line (with markers) per run.
    Returns False (and writes a placeholder with ``empty_message``) when none was logged."""
    history = history[history["key"].isin(list(keys))] if len(history) else history
    if not len(history):
        _placeholder(path, empty_message)
        return False
    plt = _pyplot()
    keys = [key for key in keys if key in set(history["key"])]
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.0 * rows), squeeze=False)
    for axis, key in zip(axes.flat, keys):
        for run_id, points in history[history["key"] == key].groupby("run_id", sort=False):
            curve = points.sort_values("step")
            axis.plot(curve["step"], curve["value"], linewidth=1.0, marker="o" if len(curve) < 30 else None,
                      markersize=3, label=labels.get(run_id, str(run_id)[:8]))
        axis.set_title(key, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(keys):]:
        axis.set_visible(False)
    if history["run_id"].nunique() > 1:
        axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)
    return True


def plot_headlines(table: pd.DataFrame, path: Path) -> bool:
    """A bar chart per headline metric, one bar per experiment. Returns False (and writes a
    placeholder saying so) when no run has any."""
    present = [h for h in headlines() if h.label in table.columns and table[h.label].notna().any()]
    if not present:
        _placeholder(path, "no run has FID, mIoU, accuracy, speed or training time yet")
        return False
    plt = _pyplot()
    names = table["experiment"].astype(str) + " (" + table["run"].astype(str) + ")"
    figure, axes = plt.subplots(1, len(present), figsize=(max(4.0, 0.5 * len(table) + 2.5) * len(present), 3.6),
                                squeeze=False)
    for axis, headline in zip(axes.flat, present):
        values = table[headline.label]
        axis.bar(range(len(values)), values.fillna(0.0), color="#4c72b0")
        axis.set_xticks(range(len(values)), names, rotation=45, ha="right", fontsize=8)
        direction = {True: " (higher is better)", False: " (lower is better)", None: ""}[headline.higher_is_better]
        axis.set_title(headline.label + direction, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)
    return True


# --------------------------------------------------------------------------------------
# The page.


@dataclass(frozen=True)
class Section:
    title: str
    body_html: str  # trusted HTML built by this module (tables, figures, escaped text)
    collapsed: bool = False  # a closed <details> the reader opens (the full protocol)
    anchor: str = ""  # the section's id


def figure_html(path: Path, caption: str, scale: int = 1) -> str:
    """An ``<img>`` with the PNG inlined as a data URI (the page stays one self-contained file).

    ``scale`` > 1 shows it that many times larger with sharp pixels (small sample grids).
    """
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    size = ""
    if scale > 1:
        with Image.open(path) as image:
            size = f' class="pixels" width="{image.width * scale}" height="{image.height * scale}"'
    return (f'<figure><img alt="{html.escape(caption)}"{size} src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def readable_scale(path: Path, columns: int = 3, tile_pixels: int = 192) -> int:
    """The integer zoom that shows each tile of a ``columns``-wide grid about ``tile_pixels`` wide."""
    with Image.open(path) as image:
        return max(1, tile_pixels // max(1, image.width // columns))


def text_html(text: str) -> str:
    return "".join(f"<p>{html.escape(paragraph)}</p>" for paragraph in text.split("\n\n") if paragraph.strip())


def definition_list_html(items: dict[str, object]) -> str:
    rows = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(_cell(v, None))}</dd>" for k, v in items.items())
    return f"<dl>{rows}</dl>"


def headline_html(values: dict[str, object], unavailable: dict[str, str], context: Sequence[str]) -> str:
    """The run's numbers first: one card per registered metric (value, unit, which way is
    better), then why any is missing (metrics with the same reason together), then one line
    of context (dataset, images, judge)."""
    cards = []
    for metric in registered_metrics():
        value = values.get(metric.name)
        direction = {True: "higher is better", False: "lower is better", None: "the judge's ceiling"}[
            metric.higher_is_better]
        shown = metric.format(value if isinstance(value, (int, float)) else None)
        unit = f'<span class="unit">{html.escape(metric.unit)}</span>' if metric.unit and value is not None else ""
        css = "card missing" if value is None else "card"
        cards.append(f'<div class="{css}" data-metric="{html.escape(metric.name)}"><div class="label">'
                     f'{html.escape(metric.label)}</div><div class="value">{html.escape(shown)}{unit}</div>'
                     f'<div class="note">{html.escape(direction)}</div></div>')
    reasons: dict[str, list[str]] = {}
    for name, reason in unavailable.items():
        label = next((m.label for m in registered_metrics() if m.name == name), name)
        reasons.setdefault(reason, []).append(label)
    missing = "".join(f"<li><b>{html.escape(', '.join(labels))}</b> unavailable: {html.escape(reason)}</li>"
                      for reason, labels in reasons.items())
    return (f'<div class="cards">{"".join(cards)}</div>' + (f'<ul class="missing">{missing}</ul>' if missing else "")
            + "".join(f'<p class="context">{html.escape(line)}</p>' for line in context))


def per_class_html(rows: Sequence[dict[str, str]]) -> str:
    """The judge class by class: generated vs real IoU (percent), pixels, and the classes the
    segmenter does not recognise on real photos flagged "not judged reliably"."""
    def percent(text: str) -> str:
        return "-" if text in ("", None) else f"{100 * float(text):.1f}"

    body = []
    for row in rows:
        unreliable = row.get("judged_reliably") == "no"
        note = "not judged reliably (real-photo IoU below 20%)" if unreliable else ""
        css = ' class="unreliable"' if unreliable else ""
        body.append(f'<tr{css}><td>{html.escape(row["class_name"])}</td>'
                    f'<td>{percent(row["generated_iou"])}</td><td>{percent(row["real_iou"])}</td>'
                    f'<td>{int(row["ground_truth_pixels"]):,}</td><td>{html.escape(note)}</td></tr>')
    header = ("<tr><th>class</th><th>IoU generated (%)</th><th>IoU real (%)</th><th>pixels</th>"
              "<th>note</th></tr>")
    return f'<table class="per-class"><thead>{header}</thead><tbody>{"".join(body)}</tbody></table>'


# scripts/compare_methods.py's budgets as the table says them.
BUDGETS = {"steps": "equal steps", "time": "equal time", "planned": "full schedule"}


def methods_html(comparison: dict) -> str:
    """``reports/compare_methods.json`` (scripts/compare_methods.py) as tables: per method and
    budget, the mean (and spread) over the seeds of mIoU, the generated/real mIoU ratio,
    accuracy and steps, with training seconds and images/s (from the method's run alone on the
    machine when it was timed so); then each method's per-class IoU."""
    def stat(entry: dict | None, digits: int, spread: bool = True) -> str:
        if not entry:
            return "-"
        text = f"{entry['mean']:.{digits}f}"
        return text + (f" ± {entry['std']:.{digits}f}" if spread and len(entry.get("values", [])) > 1 else "")

    judge = next((run.get("real_miou") for run in comparison.get("runs", []) if run.get("real_miou")), None)
    head = ("<tr><th>method</th><th>budget</th><th>seeds</th><th>steps</th><th>train s</th><th>images/s</th>"
            "<th>mIoU (%)</th><th>judge's ceiling (%)</th><th>generated / real mIoU</th><th>accuracy (%)</th>"
            "<th>FID</th></tr>")
    rows = []
    for row in comparison.get("summary", []):
        cells = [row.get("label") or row["method"], BUDGETS.get(row["budget"], row["budget"]), ", ".join(str(s) for s in row["seeds"]),
                 stat(row["steps"], 0, spread=False), stat(row["train_seconds"], 0), stat(row["images_per_s"], 1),
                 stat(row["miou"], 1), "-" if judge is None else f"{judge:.1f}", stat(row["miou_ratio"], 3),
                 stat(row["accuracy"], 1), stat(row.get("fid"), 1)]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>")
    summary = f"<table class=\"methods\"><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
    per_class: dict[str, dict[str, list[float]]] = {}
    for run in comparison.get("runs", []):
        if run.get("budget") != "steps":
            continue
        for name, value in (run.get("per_class_iou") or {}).items():
            if value not in ("", None):
                per_class.setdefault(run.get("label") or run["method"], {}).setdefault(name, []).append(
                    100 * float(value))
    classes = sorted({name for values in per_class.values() for name in values})
    class_rows = "".join(
        f"<tr><td>{html.escape(method)}</td>" + "".join(
            f"<td>{np.mean(values[name]):.1f}</td>" if name in values else "<td>-</td>" for name in classes) + "</tr>"
        for method, values in per_class.items())
    per_class_table = ("<table class=\"methods-per-class\"><thead><tr><th>method (equal steps)</th>"
                       + "".join(f"<th>{html.escape(name)}</th>" for name in classes)
                       + f"</tr></thead><tbody>{class_rows}</tbody></table>") if classes else ""
    return summary + per_class_table


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } tr.current td { background: #fff8d6; }
td:first-child, th:first-child { text-align: left; }
tr.unreliable td { color: #888; font-style: italic; } tr.unreliable td:last-child { color: #a33; }
figure { margin: 1em 0; display: inline-block; vertical-align: top; } img { max-width: 100%; height: auto; }
img.pixels { image-rendering: pixelated; }
figcaption { font-size: .85em; color: #555; }
.cards { display: flex; flex-wrap: wrap; gap: .8em; margin: 1em 0; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: .6em 1em; min-width: 8.5em; background: #fafafa; }
.card .label { font-size: .85em; color: #555; } .card .value { font-size: 1.9em; font-weight: 600; }
.card .unit { font-size: .55em; font-weight: 400; margin-left: .15em; } .card .note { font-size: .75em; color: #777; }
.card.missing .value { color: #aaa; } ul.missing { font-size: .85em; color: #844; } p.context { font-size: .9em; }
details > summary { cursor: pointer; } details > summary h2 { display: inline; border: none; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; font-size: .9em; }
dt { font-weight: 600; } dd { margin: 0; font-family: ui-monospace, monospace; }
"""


def render_page(title: str, sections: Sequence[Section]) -> str:
    """A complete, self-contained HTML document (no scripts, no external resources); a
    collapsed section is a closed ``<details>`` whose summary is its heading."""
    parts = []
    for section in sections:
        anchor = f' id="{html.escape(section.anchor)}"' if section.anchor else ""
        heading = f"<h2>{html.escape(section.title)}</h2>"
        if section.collapsed:
            parts.append(f"<section{anchor}><details><summary>{heading}</summary>\n{section.body_html}\n"
                         "</details></section>")
        else:
            parts.append(f"<section{anchor}>{heading}\n{section.body_html}\n</section>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n")
