"""CIDEr against pycocoevalcap, and VQA accuracy on hand-worked official examples."""

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from mm1_jax.eval import metrics
from mm1_jax.eval.ptb_tokenizer import coco_caption_tokens

WORDS = ('a man woman dog cat red blue green sitting standing on in the of with and two three '
         'large small table street bus train picture near next to').split()


def _sentence(rng, low=1, high=14):
  return ' '.join(rng.choice(WORDS, size=int(rng.integers(low, high))))


def _random_corpus(rng):
  num_images = int(rng.integers(1, 12))
  references = {i: [_sentence(rng) for _ in range(int(rng.integers(1, 7)))]
                for i in range(num_images)}
  predictions = {}
  for i, refs in references.items():
    choice = rng.random()
    if choice < 0.2:
      predictions[i] = refs[0]  # an exact reference
    elif choice < 0.3:
      predictions[i] = 'zebra'  # nothing in common with any reference
    else:
      predictions[i] = _sentence(rng)
  return references, predictions


def _reference_cider(references, predictions):
  """pycocoevalcap's Cider on the same (already tokenised) inputs."""
  score, per_image = Cider().compute_score(
      references, {key: [value] for key, value in predictions.items()})
  return float(score), per_image


def test_cider_equals_pycocoevalcap_on_random_corpora():
  rng = np.random.default_rng(0)
  for _ in range(60):
    references, predictions = _random_corpus(rng)
    expected, expected_per_image = _reference_cider(references, predictions)
    assert metrics.cider(references, predictions, tokenize=False) == pytest.approx(
        expected, abs=1e-6)
    ours = metrics.cider_per_image(references, predictions, tokenize=False)
    np.testing.assert_allclose([ours[k] for k in references], expected_per_image, atol=1e-6)


@pytest.mark.parametrize('references, predictions', [
    # one image: log(N) = 0, every weight is zero
    ({1: ['a dog on a mat']}, {1: 'a dog on a mat'}),
    # repeated words and n-grams, references of different lengths
    ({1: ['dog dog dog dog', 'a dog', 'the the the cat sat'],
      2: ['red bus', 'a red bus on a road']},
     {1: 'dog dog dog', 2: 'red red red bus bus'}),
    # one-word and long candidates (length penalty on bigram counts)
    ({1: ['cat'], 2: ['a very long caption with many many words about a small red bus'],
      3: ['two cats', 'a cat and a cat']},
     {1: 'cat', 2: 'bus', 3: 'a cat and a cat and a cat and a cat and a cat'}),
    # n-grams that no reference contains, and an image whose candidate matches everything
    ({1: ['a b c d e', 'a b c d e'], 2: ['x y z'], 3: ['p q']},
     {1: 'a b c d e', 2: 'unseen words only', 3: 'p q'}),
])
def test_cider_equals_pycocoevalcap_on_edge_cases(references, predictions):
  expected, _ = _reference_cider(references, predictions)
  assert metrics.cider(references, predictions, tokenize=False) == pytest.approx(expected,
                                                                                 abs=1e-6)


def test_cider_equals_pycocoevalcap_on_raw_captions_tokenised_alike():
  raw_references = {
      'a': ['A man riding a wave on top of a surfboard.', "The surfer's board is white."],
      'b': ['Two dogs (brown) play in the grass!', 'Dogs playing, outside; in a park.'],
      'c': ['A "red" double-decker bus.', 'A bus in the centre of London...'],
  }
  raw_predictions = {'a': 'A man riding a wave.', 'b': "Two dogs don't play.",
                     'c': 'A red bus in the center.'}
  references = {k: [coco_caption_tokens(r) for r in v] for k, v in raw_references.items()}
  predictions = {k: coco_caption_tokens(v) for k, v in raw_predictions.items()}
  expected, _ = _reference_cider(references, predictions)
  assert metrics.cider(raw_references, raw_predictions) == pytest.approx(expected, abs=1e-6)
  assert expected > 0


def test_cider_rejects_mismatched_ids():
  with pytest.raises(ValueError, match='missing predictions for'):
    metrics.cider({1: ['a'], 2: ['b']}, {1: 'a'})
  with pytest.raises(ValueError, match='non-empty list'):
    metrics.cider({1: []}, {1: 'a'})


# VQA accuracy. With m of the ten human answers equal to the (normalised) prediction, the
# mean over the ten leave-one-out subsets of min(1, matches / 3) is worked out by hand:
# m=1: (1*0 + 9*(1/3))/10 = 30%; m=2: (2*(1/3) + 8*(2/3))/10 = 60%;
# m=3: (3*(2/3) + 7*1)/10 = 90%; m>=4: 100%.

def _humans(match: str, m: int, other: str = 'something else') -> list[str]:
  return [match] * m + [other] * (10 - m)


@pytest.mark.parametrize('m, expected', [(0, 0.0), (1, 30.0), (2, 60.0), (3, 90.0), (4, 100.0),
                                         (10, 100.0)])
def test_vqa_partial_credit(m, expected):
  assert metrics.vqa_accuracy({7: 'yes'}, {7: _humans('yes', m, 'no')}) == pytest.approx(expected)


@pytest.mark.parametrize('prediction, humans, expected', [
    # the prediction is fully normalised: case, number words, articles, punctuation
    ('Two', ['2'] * 10, 100.0),
    ('two.', ['2'] * 10, 100.0),
    ('None', ['0'] * 10, 100.0),
    ('a dog', ['dog'] * 10, 100.0),
    ('  yes\n', ['yes'] * 10, 100.0),
    ('red   ball', ['red ball'] * 10, 100.0),
    # contractions written without apostrophe are restored in the prediction ...
    ('dont know', ["don't know"] * 10, 100.0),
    # ... but not in the human answers, which only lose punctuation, only when they disagree
    ('dont know', ['dont know'] * 10, 0.0),
    ('the dog', ['the dog'] * 10, 0.0),
    ('t-shirt', ['t shirt'] * 10, 100.0),
    ('t-shirt', ['t-shirt'] * 10, 0.0),
    ('t-shirt', ['t-shirt'] * 9 + ['shirt'], 100.0),  # they disagree: 't shirt' nine times
    # the official table's capitalised keys never match: 'im' stays 'im'
    ('Im fine', ['im fine'] * 10, 100.0),
    # digit,comma,digit anywhere: every punctuation mark is deleted, not spaced
    ('1,000', ['1000'] * 10, 100.0),
    # a period before a digit stays
    ('2.5', ['2.5'] * 10, 100.0),
    # a mark not touching a space becomes a space; the human 'red!' becomes 'red ' (kept
    # with its space), so only the two plain 'red' answers match: 60%
    ('red!', ['red'] * 2 + ['red!'] * 8, 60.0),
])
def test_vqa_normalisation_examples(prediction, humans, expected):
  assert metrics.vqa_accuracy({1: prediction}, {1: humans}) == pytest.approx(expected)


def test_vqa_accuracy_is_the_mean_over_questions_in_percent():
  answers = {1: ['yes'] * 10, 2: _humans('blue', 2, 'navy'), 3: ['4'] * 10}
  predictions = {1: 'yes', 2: 'blue', 3: 'three'}
  assert metrics.vqa_accuracy(predictions, answers) == pytest.approx((100 + 60 + 0) / 3)


def test_vqa_accuracy_rejects_missing_predictions():
  with pytest.raises(ValueError, match='missing predictions'):
    metrics.vqa_accuracy({}, {1: ['yes'] * 10})
