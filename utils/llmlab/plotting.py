"""The course's plot style: readable defaults and a helper that never forgets labels and units.

>>> from llmlab.plotting import use_course_style, labelled
>>> use_course_style()
>>> fig, ax = plt.subplots()
>>> labelled(ax, "Score variance vs d_k", "d_k", "variance of q.k")
"""

from __future__ import annotations

COURSE_STYLE = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 100,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "legend.frameon": False,
    "lines.linewidth": 2.0,
}


def use_course_style() -> None:
    """Apply :data:`COURSE_STYLE` to matplotlib (call once at the top of a notebook)."""
    import matplotlib as mpl

    mpl.rcParams.update(COURSE_STYLE)


def labelled(ax, title: str, xlabel: str, ylabel: str):
    """Give ``ax`` a title and axis labels (put units in the labels: "time (ms)"); return it."""
    for name, value in (("title", title), ("xlabel", xlabel), ("ylabel", ylabel)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax
