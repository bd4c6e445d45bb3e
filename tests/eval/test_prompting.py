"""Few-shot prompts: templates, deterministic demonstrations, interleaved layout."""

import pytest

from mm1_jax.eval import prompting
from mm1_jax.eval.tasks import CaptionExample, VqaExample

VQA = 'Question: {question} Answer: {answer}'


def _vqa(i, answers=('red',) * 10):
  return VqaExample(i, f'img{i}.png', f'what colour is {i}?', tuple(answers))


def test_vqa_prompt_interleaves_images_and_ends_with_the_open_answer():
  demos = [_vqa(1), _vqa(2, ('blue',) * 7 + ('navy',) * 3)]
  parts = prompting.build_prompt(VQA, demos, _vqa(3), load_image=lambda p: f'<{p}>')
  assert parts == ['<img1.png>', 'Question: what colour is 1? Answer: red',
                   '<img2.png>', 'Question: what colour is 2? Answer: blue',
                   '<img3.png>', 'Question: what colour is 3? Answer:']


def test_caption_prompt_uses_the_first_reference_and_no_query_text():
  demo = CaptionExample(1, 'a.png', ('A red circle.', 'a circle'))
  parts = prompting.build_prompt('{caption}', [demo], CaptionExample(2, 'b.png', ('x',)),
                                 load_image=lambda p: p)
  assert parts == ['a.png', 'A red circle.', 'b.png']
  parts = prompting.build_prompt('A photo of {caption}', [],
                                 CaptionExample(2, 'b.png', ('x',)), load_image=lambda p: p)
  assert parts == ['b.png', 'A photo of']


def test_majority_answer_wins_ties_by_first_seen():
  assert _vqa(1, ('no', 'yes', 'yes', 'no')).majority_answer == 'no'


def test_demonstrations_are_deterministic_distinct_and_vary_per_query():
  support = [_vqa(i) for i in range(50)]
  first = prompting.sample_demonstrations(support, 4, seed=0, query_index=3)
  assert first == prompting.sample_demonstrations(support, 4, seed=0, query_index=3)
  assert len({d.id for d in first}) == 4
  assert first != prompting.sample_demonstrations(support, 4, seed=0, query_index=4)
  assert first != prompting.sample_demonstrations(support, 4, seed=1, query_index=3)
  assert prompting.sample_demonstrations(support, 0, seed=0, query_index=0) == []
  with pytest.raises(ValueError, match='support split has 50'):
    prompting.sample_demonstrations(support, 51, seed=0, query_index=0)


@pytest.mark.parametrize('template, kind, message', [
    ('Question: {question}', 'vqa', 'must end with {answer}'),
    ('{answer} is the answer to {question}', 'vqa', 'must end with {answer}'),
    ('{caption} {caption}', 'caption', 'exactly once'),
    ('{caption} {colour}', 'caption', "names \\['colour'\\]"),
    ('{caption', 'caption', 'not a format string'),
])
def test_bad_templates_are_named(template, kind, message):
  with pytest.raises(prompting.TemplateError, match=message):
    prompting.check_template(template, kind, 'config.eval.templates.x')


def test_template_precedence():
  assert prompting.template_for('vqa', {'vqa': 'Q: {question} A: {answer}'}) == \
      'Q: {question} A: {answer}'
  assert prompting.template_for('vqa', {'vqa': 'x {answer}'}, 'own {answer}') == 'own {answer}'
  assert prompting.template_for('caption', None) == '{caption}'
