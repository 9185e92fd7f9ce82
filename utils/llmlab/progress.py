"""Progress bars for long loops: ``tqdm.auto`` (a widget in Jupyter, text in a terminal).

``LLMLAB_PROGRESS=0`` turns every bar off (graders and log files prefer silence).

    >>> from llmlab.progress import progress
    >>> for step in progress(range(1000), desc="training"):
    ...     ...
"""

from __future__ import annotations

import os

PROGRESS_ENV = "LLMLAB_PROGRESS"


def progress(iterable=None, *, desc: str | None = None, total: int | None = None, **kwargs):
    """Wrap ``iterable`` in a progress bar; extra keyword arguments go to ``tqdm``."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", os.environ.get(PROGRESS_ENV) == "0")
    kwargs.setdefault("mininterval", 0.5)  # a bar that redraws less keeps notebooks small
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, desc=desc, total=total, **kwargs)
