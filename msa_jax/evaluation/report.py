"""Text tables and figures of results against memory size, shared by the NIAH evaluation
(`niah_eval`), the retrieval scaling of `run` and `python -m msa_jax.scale`.

Figures are `matplotlib.figure.Figure`s (no pyplot, no display backend needed): save them with
`fig.savefig(path)`, or show one in a notebook by returning it from a cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MEMORY_TOKENS = "memory size (tokens)"


def format_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A fixed-width text table: the header, a rule of dashes, then one line per row; every
  column right-aligned to its widest cell, columns two spaces apart."""
  widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
  fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
  return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def memory_figure(panels: int = 2, title: str = "") -> tuple[Any, Sequence[Any]]:
  """(figure, axes): `panels` side-by-side axes, 5 x 4 inches each, sharing their x axis
  (memory size), under `title`."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(5 * panels, 4), layout="constrained")
  axes = fig.subplots(1, panels, sharex=True, squeeze=False)[0]
  if title:
    fig.suptitle(title)
  return fig, list(axes)


def style_memory_axis(ax, ylabel: str, *, xlabel: str = MEMORY_TOKENS,
                      unit_range: bool = True) -> None:
  """Styles a panel drawn against memory size: log x axis, labels, light grid, the legend of
  its labelled lines; `unit_range`: y from 0 to 1 (recall, accuracy) with a small margin."""
  ax.set_xscale("log")
  if unit_range:
    ax.set_ylim(-0.05, 1.05)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
