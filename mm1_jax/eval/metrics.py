"""The two scores MM1 reports: CIDEr (captioning) and VQA accuracy.

`cider(references, predictions)` is CIDEr-D exactly as pycocoevalcap's `Cider` computes it
(n-grams 1..4, Gaussian length penalty with sigma 6, document frequencies from the
references, scores x10 per image) on text tokenized like its PTBTokenizer
(`ptb_tokenizer.coco_caption_tokens`), without Java. Like pycocoevalcap it returns the
plain score (1.231); papers print 100x that (123.1).

Definitions, per image i with candidate c and references r_1..r_m, over a corpus of N
images:
  g_n(s)[w] = tf(w, s) * (log N - log max(1, df(w)))  for each n-gram w of length n,
              df(w) = the number of images whose references contain w;
  sim_n(c, r) = sum_w min(g_n(c)[w], g_n(r)[w]) * g_n(r)[w] / (|g_n(c)| |g_n(r)|)
              * exp(-(len(c) - len(r))^2 / (2 sigma^2)),
              where len counts the *bigrams* of a sentence (pycocoevalcap's choice) and a
              zero norm leaves the sum undivided;
  CIDEr(i) = 10 * mean_n sum_j sim_n(c, r_j) / m;  CIDEr = mean_i CIDEr(i).

`vqa_accuracy(predictions, answers)` is the official VQA accuracy in percent: per question
the mean over the ten leave-one-out subsets of the human answers of
min(1, matching answers / 3), with the normalisation of `vqa_answers`.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Hashable, Mapping, Sequence

from mm1_jax.eval import vqa_answers
from mm1_jax.eval.ptb_tokenizer import coco_caption_tokens

CIDER_MAX_N = 4
CIDER_SIGMA = 6.0

NGramCounts = collections.Counter


def _ngram_counts(sentence: str, max_n: int) -> NGramCounts:
  words = sentence.split()
  counts = collections.Counter()
  for n in range(1, max_n + 1):
    for start in range(len(words) - n + 1):
      counts[tuple(words[start:start + n])] += 1
  return counts


class _TfIdf:
  """One sentence as tf-idf vectors per n-gram length, with their norms and length."""

  def __init__(self, counts: NGramCounts, idf, max_n: int):
    self.vectors = [dict() for _ in range(max_n)]
    squares = [0.0] * max_n
    self.length = 0  # bigram count, as pycocoevalcap measures length
    for ngram, tf in counts.items():
      n = len(ngram) - 1
      weight = float(tf) * idf(ngram)
      self.vectors[n][ngram] = weight
      squares[n] += weight ** 2
      if n == 1:
        self.length += tf
    self.norms = [math.sqrt(s) for s in squares]


def _similarity(candidate: _TfIdf, reference: _TfIdf, max_n: int, sigma: float) -> list[float]:
  delta = float(candidate.length - reference.length)
  penalty = math.e ** (-(delta ** 2) / (2 * sigma ** 2))
  values = []
  for n in range(max_n):
    ref_vector = reference.vectors[n]
    value = 0.0
    for ngram, weight in candidate.vectors[n].items():
      ref_weight = ref_vector.get(ngram, 0.0)
      value += min(weight, ref_weight) * ref_weight
    if candidate.norms[n] != 0 and reference.norms[n] != 0:
      value /= candidate.norms[n] * reference.norms[n]
    values.append(value * penalty)
  return values


def _check_ids(references: Mapping, predictions: Mapping) -> None:
  missing = [key for key in references if key not in predictions]
  extra = [key for key in predictions if key not in references]
  if missing or extra:
    raise ValueError(f'predictions and references must cover the same ids: missing '
                     f'predictions for {missing[:5]} ({len(missing)} in all), no references '
                     f'for {extra[:5]} ({len(extra)} in all)')


def cider_per_image(references: Mapping[Hashable, Sequence[str]],
                    predictions: Mapping[Hashable, str], *, tokenize: bool = True,
                    max_n: int = CIDER_MAX_N, sigma: float = CIDER_SIGMA
                    ) -> dict[Hashable, float]:
  """CIDEr-D of each image (see the module docstring); `tokenize=False` takes the texts as
  already tokenized (words separated by whitespace)."""
  _check_ids(references, predictions)
  if not references:
    raise ValueError('cider needs at least one image')
  prepare = coco_caption_tokens if tokenize else (lambda text: text)
  ref_counts, cand_counts = {}, {}
  for key, refs in references.items():
    if isinstance(refs, str) or not refs:
      raise ValueError(f'references[{key!r}] must be a non-empty list of strings')
    ref_counts[key] = [_ngram_counts(prepare(ref), max_n) for ref in refs]
    cand_counts[key] = _ngram_counts(prepare(predictions[key]), max_n)
  document_frequency = collections.Counter()
  for counts in ref_counts.values():
    document_frequency.update(set().union(*counts))
  log_num_images = math.log(float(len(references)))

  def idf(ngram):
    return log_num_images - math.log(max(1.0, float(document_frequency[ngram])))

  scores = {}
  for key, refs in ref_counts.items():
    candidate = _TfIdf(cand_counts[key], idf, max_n)
    totals = [0.0] * max_n
    for ref in refs:
      for n, value in enumerate(_similarity(candidate, _TfIdf(ref, idf, max_n), max_n, sigma)):
        totals[n] += value
    scores[key] = sum(totals) / max_n / len(refs) * 10.0
  return scores


def cider(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str],
          *, tokenize: bool = True) -> float:
  """Corpus CIDEr-D: the mean over images of `cider_per_image` (pycocoevalcap's scale)."""
  scores = cider_per_image(references, predictions, tokenize=tokenize)
  return sum(scores.values()) / len(scores)


def vqa_question_accuracy(prediction: str, answers: Sequence[str]) -> float:
  """The official accuracy of one answer in [0, 1]: the mean over leave-one-out subsets of
  the human answers of min(1, matches / 3)."""
  if isinstance(answers, str) or not answers:
    raise ValueError(f'expected a list of human answers, got {answers!r}')
  predicted = vqa_answers.normalise_prediction(prediction)
  humans = vqa_answers.normalise_human_answers(list(answers))
  matches = [human == predicted for human in humans]
  total = sum(matches)
  return sum(min(1.0, (total - own) / 3.0) for own in matches) / len(humans)


def vqa_accuracy(predictions: Mapping[Hashable, str],
                 answers: Mapping[Hashable, Sequence[str]]) -> float:
  """Official VQA accuracy in percent over the questions of `answers`."""
  _check_ids(answers, predictions)
  if not answers:
    raise ValueError('vqa_accuracy needs at least one question')
  return 100.0 * sum(vqa_question_accuracy(predictions[qid], humans)
                     for qid, humans in answers.items()) / len(answers)
