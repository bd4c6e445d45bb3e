"""Answer normalisation of the official VQA evaluation (vqaEval.py of the VQA API).

The official scorer applies two steps, with their historical quirks kept here on purpose
so that our numbers equal the published ones:

`strip_punctuation(text)`: each of PUNCTUATION is deleted when it touches a space in the
  *original* text (or when the text holds a digit-comma-digit group anywhere), and replaced
  by a space otherwise; apostrophes are not punctuation. Then periods are deleted unless a
  digit follows (`2.5` stays), at most 32 of them (the official code passes re.UNICODE
  where `re.sub` expects its count).
`normalise_words(text)`: lower case, split on whitespace, number words zero..ten (and
  'none') to digits, articles a/an/the dropped, then contractions written without their
  apostrophe restored (`dont` -> `don't`). Entries whose key starts with a capital
  ('Im', 'Ive', "I'dve") never match the lower-cased words: so `im` stays `im`.
"""

from __future__ import annotations

import re

PUNCTUATION = (';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>',
               '<', '@', '`', ',', '?', '!')
ARTICLES = frozenset(('a', 'an', 'the'))
NUMBER_WORDS = {'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4',
                'five': '5', 'six': '6', 'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10'}

_DIGIT_COMMA_DIGIT = re.compile(r'(\d)(,)(\d)')
# The official pattern's look-behind is written '(?!<=\d)', which is a look-ahead for the
# three characters '<=' + digit: in effect only 'not followed by a digit' applies.
_PERIOD = re.compile(r'(?!<=\d)(\.)(?!\d)')
_MAX_PERIODS_REMOVED = 32

# Contractions as the official table writes them. Each key is the form with exactly one of
# its apostrophes missing (every apostrophe in turn), so "y'all'll" is reached from
# "yall'll" and from "y'allll". Case is kept: the I-forms are unreachable, as officially.
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've
hasn't haven't he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've
it'll ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't
'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd've somebody'll
somebody's someone'd someone'd've someone'll someone's something'd something'd've
something'll that's there'd there'd've there're there's they'd they'd've they'll they're
they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd
where's where've who'd who'd've who'll who's who've why'll why're why's won't would've
wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()


def _contraction_table() -> dict[str, str]:
  table = {}
  for form in _CONTRACTED:
    for index, char in enumerate(form):
      if char == "'":
        table[form[:index] + form[index + 1:]] = form
  # The official table's own entries outside that rule: two identities (so 'lets' and
  # 'shes' stay as they are) and one entry written the wrong way round.
  table.update({"let's": "let's", "she's": "she's", "somebody'd": 'somebodyd'})
  return table


CONTRACTIONS = _contraction_table()


def strip_punctuation(text: str) -> str:
  out = text
  delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
  for mark in PUNCTUATION:
    if delete_all or mark + ' ' in text or ' ' + mark in text:
      out = out.replace(mark, '')
    else:
      out = out.replace(mark, ' ')
  return _PERIOD.sub('', out, count=_MAX_PERIODS_REMOVED)


def normalise_words(text: str) -> str:
  words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
  words = [word for word in words if word not in ARTICLES]
  return ' '.join(CONTRACTIONS.get(word, word) for word in words)


def clean_whitespace(text: str) -> str:
  """Newlines and tabs to spaces, ends stripped (done to predictions and answers alike)."""
  return text.replace('\n', ' ').replace('\t', ' ').strip()


def normalise_prediction(prediction: str) -> str:
  """The full normalisation a predicted answer receives."""
  return normalise_words(strip_punctuation(clean_whitespace(prediction)))


def normalise_human_answers(answers: list[str]) -> list[str]:
  """The human answers: whitespace cleaned; punctuation stripped only if they disagree."""
  answers = [clean_whitespace(answer) for answer in answers]
  if len(set(answers)) > 1:
    answers = [strip_punctuation(answer) for answer in answers]
  return answers
