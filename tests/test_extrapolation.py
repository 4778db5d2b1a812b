"""The train-short/infer-long table's pure parts: what a wrong answer is, the printed table."""

import pytest

from msa_jax.evaluation import extrapolation


@pytest.mark.parametrize("generated,kind", [
    ((5, 1, 2, 6, 3), "right"),         # the expected answer (document 0's first fact)
    ((5, 1, 4, 6, 3), "routed_other"),  # document 0's other fact: read, the wrong place
    ((5, 2, 1, 6, 3), "routed_other"),  # document 1's: routed with document 0
    ((5, 7, 7, 6, 3), "other_doc"),     # document 2's: in the memory, not routed
    ((5, 2, 2, 6, 3), "no_doc"),        # the right tokens in the wrong order: nobody's
    ((5, 1, 2, 6), "no_doc"),           # cut short
])
def test_classify_answer_names_whose_answer_was_generated(generated, kind):
  answers = {(5, 1, 2, 6, 3): 0, (5, 1, 4, 6, 3): 0, (5, 2, 1, 6, 3): 1, (5, 7, 7, 6, 3): 2}
  assert extrapolation.classify_answer(generated, [5, 1, 2, 6, 3], {0, 1}, answers) == kind


def test_table_prints_the_wrong_answers_kinds_and_the_relative_loss():
  rows = [extrapolation.ExtrapolationRow(1, 8, 512, 4, 1.0, 1.0, 1.0, 0.1,
                                         dict(right=4, routed_other=0, other_doc=0, no_doc=0)),
          extrapolation.ExtrapolationRow(10, 80, 5120, 4, 0.75, 1.0, 0.25, 0.1,
                                         dict(right=1, routed_other=2, other_doc=0, no_doc=1))]
  lines = extrapolation.format_table(rows).splitlines()
  assert lines[1].split()[-2:] == ["1.000", "0/0/0"]
  assert lines[2].split()[-2:] == ["0.250", "2/0/1"]
  assert "recall@1 25.0%, answer 75.0%" in lines[3]
