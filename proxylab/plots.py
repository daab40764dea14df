"""Pictures of proxylab's results, for people who would rather look at a scatter plot than read a correlation.

Every function draws on a fresh matplotlib ``Figure`` with the Agg canvas, never pyplot: no global figure
state, no GUI backend, safe in threads, and a notebook keeps whatever backend it uses. The picture is written
atomically to ``path`` (.png, .svg or .pdf) and the Figure is returned so a notebook can show it and a test
can read back what was drawn. matplotlib is optional (``pip install proxylab[notebooks]``) and imported only
when a picture is drawn, so ``import proxylab.plots`` costs nothing.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from proxylab.errors import MissingDependencyError, ProxylabError

PathLike = Union[str, Path]
SUFFIXES = (".png", ".svg", ".pdf")
DPI = 110
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
          "tab:cyan", "tab:gray")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


# --------------------------------------------------------------------------------------------- plumbing
def require_matplotlib() -> None:
    """Fail with the install command before any slow work when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError("matplotlib", "pip install proxylab[notebooks]", "drawing pictures") from None


def check_plot_path(path: PathLike) -> Path:
    """The output path, checked before any slow work: matplotlib importable, a supported suffix, a parent that is
    (or can be) a folder."""
    require_matplotlib()
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise ProxylabError(f"picture file '{path}' must end in {', '.join(SUFFIXES)} (the format follows the suffix)")
    if p.is_dir():
        raise ProxylabError(f"picture file '{path}' is a folder: give a file name such as {p / 'plot.png'}")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ProxylabError(f"cannot write picture '{path}': '{parent}' is a file, not a folder")
            break
    return p


def _figure(nrows: int = 1, ncols: int = 1, size: Tuple[float, float] = (5.5, 4.2)):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path: PathLike):
    from proxylab.utils import atomic_write_bytes

    p = check_plot_path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=p.suffix.lower()[1:], dpi=DPI)
    atomic_write_bytes(p, buf.getvalue())
    return fig


def _vector(values: Any, what: str) -> np.ndarray:
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProxylabError(f"{what} must be numbers, got {type(values).__name__}") from None
    if v.ndim != 1:
        raise ProxylabError(f"{what} must be one number per configuration (1-D), got shape {v.shape}")
    if v.size == 0:
        raise ProxylabError(f"{what} is empty: nothing to draw")
    if not np.isfinite(v).all():
        raise ProxylabError(f"{what} holds {int((~np.isfinite(v)).sum())} NaN/inf value(s): an invalid proxy "
                            "has no picture; drop it or fix the formula")
    return v


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------------- proxy vs accuracy
def proxy_scatter(score: Union[Sequence[float], Mapping[str, Sequence[float]]], acc: Sequence[float], path: PathLike,
                  *, title: Optional[str] = None, xlabel: str = "proxy score", ylabel: str = "measured accuracy",
                  noise_ceiling: Optional[float] = None, ncols: int = 3):
    """Proxy score against accuracy, one point per bit configuration, Spearman in the legend.

    ``score`` is one vector or a mapping name -> vector (several proxies side by side, one panel each,
    sharing the accuracy axis). ``noise_ceiling`` (the table's split-half Spearman) joins each legend:
    no proxy can rank better than the measurement repeats itself.
    """
    from proxylab.metrics import spearman

    named = dict(score) if isinstance(score, Mapping) else {"": score}
    if not named:
        raise ProxylabError("proxy_scatter got no proxies to draw")
    a = _vector(acc, "accuracy")
    n = len(named)
    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    fig, axes = _figure(nrows, ncols)
    for k, (name, s) in enumerate(named.items()):
        ax = axes[k // ncols][k % ncols]
        s = _vector(s, f"scores of proxy '{name}'" if name else "proxy scores")
        if s.size != a.size:
            raise ProxylabError(f"{s.size} proxy scores but {a.size} accuracies: give one score per configuration")
        rho = spearman(s, a)
        label = (f"{s.size} configurations, Spearman ρ = {rho:.3f}" if math.isfinite(rho)
                 else f"{s.size} configurations, Spearman undefined (constant score)")
        ax.scatter(s, a, s=12, alpha=0.6, color=COLORS[k % len(COLORS)], edgecolors="none", label=label)
        if noise_ceiling is not None and math.isfinite(_float(noise_ceiling)):
            # an empty artist: the ceiling is a number to read next to ρ, not something on the axes
            ax.plot([], [], " ", label=f"noise ceiling ρ = {float(noise_ceiling):.3f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ax.legend(loc="best", fontsize="small")
        if name:
            ax.set_title(name if len(name) <= 60 else name[:57] + "...", fontsize="medium")
        ax.grid(alpha=0.3)
    for k in range(n, nrows * ncols):  # unused panels of the last row
        axes[k // ncols][k % ncols].set_visible(False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------- search history
def _read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _history_source(history) -> Tuple[List[Dict[str, Any]], Optional[float], str]:
    """(rows, select fitness of the chosen proxy or None, where the rows came from)."""
    if hasattr(history, "history_"):  # a fitted ProxySearch: its answer, which the allocation check may pick
        best = getattr(history, "best_row_", None) or (getattr(history, "hall_of_fame_", None) or [{}])[0]
        return list(history.history_), _float(best.get("select_fitness")), "search"
    if isinstance(history, (str, Path)):
        p = Path(history)
        folder = p if p.is_dir() else None
        csv_path = p / "history.csv" if folder else p
        if not csv_path.is_file():
            raise ProxylabError(f"no search history at {csv_path}: give a search's --out folder or its history.csv")
        select = None
        check_path = csv_path.parent / "allocation_check.csv"  # --select-by allocation: its chosen row
        hof_path = csv_path.parent / "hall_of_fame.csv"
        if check_path.is_file():
            chosen = [r for r in _read_csv(check_path) if r.get("chosen") == "True"]
            if chosen:
                select = _float(chosen[0].get("select_fitness"))
        elif hof_path.is_file():
            hof = _read_csv(hof_path)
            if hof:
                select = _float(hof[0].get("select_fitness"))
        return _read_csv(csv_path), select, str(csv_path)
    return [dict(r) for r in history], None, "rows"


def search_history(history, path: PathLike, *, select_fitness: Optional[float] = None, title: Optional[str] = None):
    """Best and mean population fitness against iteration.

    ``history``: a fitted ProxySearch, a search's output folder, its history.csv, or rows with iteration,
    best_fitness and mean_fitness. A ``select_fitness`` column, when the rows have one, is drawn as a line;
    the chosen proxy's select-split fitness (``select_fitness``, or the first hall-of-fame row of the folder /
    search) is drawn as a horizontal line, so over-fitting to the search split shows as a gap.
    """
    rows, found_select, source = _history_source(history)
    if not rows:
        raise ProxylabError(f"the search history ({source}) has no rows: nothing to draw")
    need = ("iteration", "best_fitness", "mean_fitness")
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise ProxylabError(f"the search history ({source}) lacks column(s) {', '.join(missing)}; "
                            f"it has {', '.join(rows[0])}. Give a proxylab search history")
    it = np.array([_float(r["iteration"]) for r in rows])
    best = np.array([_float(r["best_fitness"]) for r in rows])
    mean = np.array([_float(r["mean_fitness"]) for r in rows])
    fig, axes = _figure(size=(7.0, 4.2))
    ax = axes[0][0]
    ax.plot(it, best, color="tab:blue", lw=2, label="best in population (search split)")
    ax.plot(it, mean, color="tab:orange", lw=1.5, ls="--", label="population mean (search split)")
    if "select_fitness" in rows[0]:
        sel = np.array([_float(r["select_fitness"]) for r in rows])
        if np.isfinite(sel).any():
            ax.plot(it, sel, color="tab:green", lw=1.5, label="best on the select split")
    select = select_fitness if select_fitness is not None else found_select
    if select is not None and math.isfinite(_float(select)):
        ax.axhline(float(select), color="tab:red", ls=":", lw=1.5,
                   label=f"chosen proxy on the select split ({float(select):.3f})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("fitness (Spearman ρ)")
    ax.set_title(title or "proxy search: fitness by iteration")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- Pareto
def pareto_front(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """Indices of the points no other point beats: none has x <= and y >= with one strictly better.
    Sorted by x. Exact duplicates keep the first."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    order = np.lexsort((-y, x))  # by x ascending, best y first among equal x
    front, best_y = [], -np.inf
    for i in order:
        if y[i] > best_y:
            front.append(int(i))
            best_y = y[i]
    return np.array(front, dtype=np.int64)


def pareto(rows: Sequence[Mapping[str, Any]], path: PathLike, *, x: str = "size_mb", y: str = "acc",
           group: str = "allocator", background: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
           xlabel: Optional[str] = None, ylabel: Optional[str] = None, title: Optional[str] = None):
    """Size against accuracy, one marker per allocator, the Pareto front over all points marked.

    ``rows``: dicts with ``x``, ``y`` and ``group`` keys, e.g. the rows of ``proxylab allocate --allocator all
    --measure`` for one or several budgets. ``background``: (x values, y values) drawn in grey, e.g. every
    configuration of a bench table, to show where the allocations sit among them.
    """
    rows = [dict(r) for r in rows]
    if not rows:
        raise ProxylabError("pareto got no rows: run allocations first (proxylab allocate --allocator all --measure)")
    for key in (x, y):
        if any(key not in r for r in rows):
            hint = " (measure accuracy: proxylab allocate --measure)" if key == "acc" else ""
            raise ProxylabError(f"every row needs a '{key}' value to draw the Pareto plot{hint}")
    xs = _vector([r[x] for r in rows], x)
    ys = _vector([r[y] for r in rows], y)
    groups = [str(r.get(group, "")) for r in rows]
    fig, axes = _figure(size=(7.0, 4.6))
    ax = axes[0][0]
    if background is not None:
        bx, by = _vector(background[0], "background x"), _vector(background[1], "background y")
        if bx.size != by.size:
            raise ProxylabError(f"background has {bx.size} x values but {by.size} y values")
        ax.scatter(bx, by, s=8, color="0.75", edgecolors="none", label=f"bench configurations ({bx.size})", zorder=1)
    for k, name in enumerate(dict.fromkeys(groups)):
        sel = [i for i, g in enumerate(groups) if g == name]
        ax.scatter(xs[sel], ys[sel], s=48, marker=MARKERS[k % len(MARKERS)], color=COLORS[k % len(COLORS)],
                   label=name or "allocation", zorder=3)
    front = pareto_front(xs, ys)
    ax.step(xs[front], ys[front], where="post", color="black", lw=1.2, zorder=2,
            label=f"Pareto front ({len(front)} point{'s' if len(front) != 1 else ''})")
    ax.scatter(xs[front], ys[front], s=140, facecolors="none", edgecolors="black", lw=1.2, zorder=4)
    ax.set_xlabel(xlabel or ("model size (MiB)" if x == "size_mb" else x))
    ax.set_ylabel(ylabel or ("test accuracy" if y == "acc" else y))
    ax.set_title(title or "allocations: size against accuracy")
    # outside the axes: allocations crowd the upper left, background points fill the rest
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


# -------------------------------------------------------------------------------------------- retrieval
def _draw_metric_bars(ax, rows: Sequence[Mapping[str, Any]], metrics: Optional[Sequence[str]], group: str,
                      ylabel: str) -> None:
    rows = [dict(r) for r in rows]
    if not rows:
        raise ProxylabError("no metric rows to draw")
    if any(group not in r for r in rows):
        raise ProxylabError(f"every metric row needs a '{group}' key naming the method")
    if metrics is None:
        metrics = [k for k in rows[0] if k != group and isinstance(rows[0][k], (int, float, np.floating))
                   and not isinstance(rows[0][k], bool)]
    metrics = list(metrics)
    if not metrics:
        raise ProxylabError("the metric rows hold no numeric column to draw")
    missing = [m for m in metrics if any(m not in r for r in rows)]
    if missing:
        raise ProxylabError(f"metric(s) {', '.join(missing)} missing from some rows; rows have {', '.join(rows[0])}")
    width = 0.8 / len(rows)
    pos = np.arange(len(metrics))
    for k, r in enumerate(rows):
        vals = np.array([_float(r[m]) for m in metrics])
        ax.bar(pos + (k - (len(rows) - 1) / 2) * width, np.nan_to_num(vals, nan=0.0), width,
               color=COLORS[k % len(COLORS)], label=str(r[group]))
    ax.set_xticks(pos, metrics)
    ax.set_xlabel("metric")
    ax.set_ylabel(ylabel)
    # Outside the axes: with values near 1 on most metrics, any corner inside covers a bar.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(alpha=0.3, axis="y")


def metric_bars(rows: Sequence[Mapping[str, Any]], path: PathLike, *, metrics: Optional[Sequence[str]] = None,
                group: str = "method", title: Optional[str] = None, ylabel: str = "value (mean over query tasks)"):
    """Grouped bars: per metric (x), one bar per method (``group`` key), e.g. the rows of ``zoo eval``.
    ``metrics`` default: every numeric column of the first row. NaN draws as an empty (zero) bar."""
    fig, axes = _figure(size=(7.0, 4.2))
    _draw_metric_bars(axes[0][0], rows, metrics, group, ylabel)
    axes[0][0].set_title(title or "retrieval quality per method")
    return _save(fig, path)


def rank_chart(ranked: Union[Sequence[Any], Mapping[str, Sequence[Any]]], oracle_acc: Mapping[Any, float],
               path: PathLike, *, k: Optional[int] = None, metrics: Optional[Sequence[Mapping[str, Any]]] = None,
               group: str = "method", title: Optional[str] = None):
    """What the index returns against the ground truth: the oracle accuracy (measured on the query task) of
    the model at each retrieved rank, next to the best possible order (every model sorted by oracle accuracy).

    ``ranked``: model ids in retrieved order, or a mapping method -> ids. ``oracle_acc``: id -> accuracy.
    ``metrics``: optional rows (``group`` key + numbers) drawn as bars in a second panel.
    """
    named = dict(ranked) if isinstance(ranked, Mapping) else {"retrieved": ranked}
    truth = {key: _float(v) for key, v in dict(oracle_acc).items()}
    if not truth or not all(math.isfinite(v) for v in truth.values()):
        raise ProxylabError("oracle_acc must map every model id to a finite accuracy")
    ideal = np.sort(np.array(list(truth.values())))[::-1]
    fig, axes = _figure(1, 2 if metrics else 1, size=(6.5, 4.2))
    ax = axes[0][0]
    top = None
    for j, (name, ids) in enumerate(named.items()):
        ids = list(ids)
        if not ids:
            raise ProxylabError(f"ranking '{name}' is empty: nothing to draw")
        unknown = [i for i in ids if i not in truth]
        if unknown:
            raise ProxylabError(f"ranking '{name}' holds model id(s) {unknown[:5]} with no oracle accuracy")
        ids = ids[:k] if k else ids
        acc = np.array([truth[i] for i in ids])
        regret = ideal[0] - acc[0]
        ax.plot(np.arange(1, len(ids) + 1), acc, marker=MARKERS[j % len(MARKERS)], color=COLORS[j % len(COLORS)],
                label=f"{name} (regret@1 = {regret:.3f})", alpha=0.85)
        top = max(top or 0, len(ids))
    shown = min(top, ideal.size)
    ax.plot(np.arange(1, shown + 1), ideal[:shown], color="black", ls="--", lw=1.2,
            label="ideal order (oracle accuracy)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("retrieved rank")
    ax.set_ylabel("accuracy on the query task (oracle)")
    ax.set_title(title or "retrieved models against ground truth")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    if metrics:
        _draw_metric_bars(axes[0][1], metrics, None, group, "value for this query")
        axes[0][1].set_title("retrieval metrics")
    return _save(fig, path)


def query_results(results: Sequence[Mapping[str, Any]], path: PathLike, *, highlight: Sequence[Any] = (),
                  title: Optional[str] = None):
    """The answer to one zoo query as horizontal bars: each returned model's score, best at the top, labelled
    by its name and task. ``results``: ``Client.query(...)["results"]`` rows ({rank, id, score, metadata}) or
    dicts with id, score and name/task keys; models whose id is in ``highlight`` get their own colour."""
    rows = [dict(r) for r in results]
    if not rows:
        raise ProxylabError("the query returned no models: nothing to draw (is the index empty?)")
    if any("id" not in r or "score" not in r for r in rows):
        raise ProxylabError("every result needs an 'id' and a 'score' (rows of Client.query(...)['results'])")
    marked = set(highlight)
    scores = _vector([r["score"] for r in rows], "result scores")
    labels = []
    for r in rows:
        meta = r.get("metadata") or r
        labels.append(f"{meta.get('name', r['id'])} ({meta.get('task', '?')})")
    fig, axes = _figure(size=(8.0, max(3.0, 1.2 + 0.4 * len(rows))))
    ax = axes[0][0]
    pos = np.arange(len(rows))[::-1]  # first result on top
    colors = ["tab:orange" if r["id"] in marked else "tab:blue" for r in rows]
    ax.barh(pos, scores, color=colors)
    ax.set_yticks(pos, labels, fontsize="small")
    from matplotlib.patches import Patch

    handles = []
    if any(c == "tab:blue" for c in colors):
        handles.append(Patch(color="tab:blue", label="zoo model"))
    if any(c == "tab:orange" for c in colors):
        handles.append(Patch(color="tab:orange", label="highlighted (e.g. registered here)"))
    ax.axvline(0.0, color="black", lw=0.8)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.set_xlabel("retrieval score (cosine similarity of model and query vectors)")
    ax.set_ylabel("retrieved model (task)")
    ax.set_title(title or "models returned for the query, best first")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)
