"""Tables and figures over memory sizes (msa_jax.evaluation.report), shared by the NIAH
evaluation, the retrieval scaling and python -m msa_jax.scale."""

import io

from msa_jax.evaluation import report


def test_format_columns_right_aligns_to_the_widest_cell():
  table = report.format_columns(["task", "recall@1"], [["single", "0.500"], ["multikey", "1"]])
  assert table.split("\n") == ["    task  recall@1",
                               "--------  --------",
                               "  single     0.500",
                               "multikey         1"]
  assert report.format_columns(["a", "bb"], []) == "a  bb\n-  --"


def test_memory_figure_and_axis_style():
  fig, axes = report.memory_figure(3, "scaling")
  assert len(axes) == 3 and fig.get_suptitle() == "scaling"
  assert axes[0].get_shared_x_axes().joined(axes[0], axes[2])
  for ax in axes[:2]:
    ax.plot([1_000, 10_000], [0.2, 0.9], label="msa")
  report.style_memory_axis(axes[0], "routing recall")
  report.style_memory_axis(axes[1], "ndcg@10", xlabel="memory size (documents)",
                           unit_range=False)
  assert axes[0].get_xscale() == "log" and axes[0].get_ylim() == (-0.05, 1.05)
  assert (axes[0].get_xlabel(), axes[0].get_ylabel()) == ("memory size (tokens)",
                                                          "routing recall")
  assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["msa"]
  low, high = axes[1].get_ylim()
  assert low > 0.1 and high < 1.0 and axes[1].get_xlabel() == "memory size (documents)"
  out = io.BytesIO()
  fig.savefig(out, format="png")
  assert out.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
