"""A Python equivalent of the PTB tokenization the COCO caption evaluation runs in Java.

pycocoevalcap's `PTBTokenizer` pipes every caption (newlines replaced by spaces) through
Stanford CoreNLP 3.4.1's `edu.stanford.nlp.process.PTBTokenizer -preserveLines
-lowerCase`, then drops the tokens in `REMOVED_TOKENS`. That Java tokenizer runs with its
historical PTB3 defaults; the rules that matter for captions are:

  * punctuation becomes its own token: . , ; : ? ! (each character), '...', '--';
    a period stays on acronyms (`u.s.`) and on a few known abbreviations (`mr.`, `etc.`),
    and inside numbers (`3.5`, `1,000`, `10:30` stay whole);
  * clitics split off: `don't` -> `do n't`, `can't` -> `ca n't`, `it's` -> `it 's`,
    `we're`, `i'm`, `they've`, `he'd`, `we'll` likewise; `cannot` -> `can not`,
    `gonna` -> `gon na`, `gotta` -> `got ta`, `wanna` -> `wan na`, `'tis` -> `'t is`;
  * quotes become `` and '' (opening, closing), a lone apostrophe `'` or `` ` ``;
  * brackets become -LRB- -RRB- -LSB- -RSB- -LCB- -RCB-. The tokens are lower-cased
    *before* pycocoevalcap filters them and its list names the upper-case forms, so
    `-lrb-` and friends survive into the CIDEr input; we reproduce that;
  * dashes (en, em) become '--'; the ellipsis character becomes '...';
    `/` and `*` inside tokens are escaped as `\\/` and `\\*`;
  * $ # % & and other symbols standing next to a word are split off; hyphens and `&`
    inside a word are kept (`black-and-white`, `at&t`);
  * British spellings are Americanized on lower-case words (option `americanize`, on by
    default in 3.4.1): `-our` -> `-or` (`colour` -> `color`, with the few exceptions
    where `our` is not the suffix), `centre` -> `center`, `grey` -> `gray` and a short
    table of `-ise`, `-re`, `-elled` words.

Unicode text, URLs, e-mail addresses and SGML markup are passed through as words; a
caption rarely holds them. `coco_caption_tokens` is the whole pycocoevalcap step.
"""

from __future__ import annotations

import re

# What pycocoevalcap removes after tokenization (its list, upper-case bracket names
# included, which never match the lower-cased tokens).
REMOVED_TOKENS = frozenset(["''", "'", '``', '`', '-LRB-', '-RRB-', '-LCB-', '-RCB-', '.',
                            '?', '!', ',', ':', '-', '--', '...', ';'])

_BRACKETS = {'(': '-LRB-', ')': '-RRB-', '[': '-LSB-', ']': '-RSB-', '{': '-LCB-',
             '}': '-RCB-'}
_ABBREVIATIONS = frozenset(
    'mr mrs ms dr prof st jr sr etc vs inc ltd co corp jan feb mar apr jun jul aug sep sept '
    'oct nov dec mt ft ave gen col lt sgt capt gov sen rep rev'.split())
_ARCHAIC_T = re.compile(r"'t(?:is|was)(?![\w'])", re.IGNORECASE)
_CLITICS = ("n't", "'s", "'m", "'re", "'ve", "'d", "'ll")
_SPLIT_WORDS = {'cannot': ('can', 'not'), 'gonna': ('gon', 'na'), 'gotta': ('got', 'ta'),
                'wanna': ('wan', 'na'), 'gimme': ('gim', 'me'), 'lemme': ('lem', 'me'),
                "'tis": ("'t", 'is'), "'twas": ("'t", 'was')}

# Americanize (applies to the word as written, so capitalised words are left alone).
_AMERICAN = {
    'centre': 'center', 'centres': 'centers', 'theatre': 'theater', 'theatres': 'theaters',
    'fibre': 'fiber', 'fibres': 'fibers', 'meagre': 'meager', 'titre': 'titer',
    'titres': 'titers', 'manoeuvre': 'maneuver', 'manoeuvres': 'maneuvers', 'grey': 'gray',
    'kerb': 'curb', 'defence': 'defense', 'learnt': 'learned', 'leant': 'leaned',
    'practise': 'practice', 'practised': 'practiced', 'analogue': 'analog',
    'analogues': 'analogs', 'homologue': 'homolog', 'homologues': 'homologs',
    'anaesthetic': 'anesthetic', 'encyclopaedia': 'encyclopedia', 'oestrogen': 'estrogen',
    'oestrogens': 'estrogens', 'chimaeric': 'chimeric', 'glamour': 'glamour',
    'cancelled': 'canceled', 'cancelling': 'canceling', 'labelled': 'labeled',
    'labelling': 'labeling', 'travelled': 'traveled', 'travelling': 'traveling',
    'coloured': 'colored', 'colouring': 'coloring', 'colourful': 'colorful',
    'armoured': 'armored', 'neighbourhood': 'neighborhood',
    'neighbourhoods': 'neighborhoods', 'honourable': 'honorable', 'favourite': 'favorite',
    'favourites': 'favorites', 'organisation': 'organization',
    'organisations': 'organizations', 'capitalisation': 'capitalization',
}
# -ise verbs the table converts (with -ised, -ising and, for some, -ises).
_ISE_STEMS = ('analys', 'capitalis', 'finalis', 'localis', 'maximis', 'minimis', 'modernis',
              'penalis', 'popularis', 'pressuris', 'realis', 'recognis')
_OUR_EXCEPTIONS = re.compile(
    r'abatjour|beflour|bonjour|calambour|carrefour|cornflour|contour|de[tv]our|dortour|'
    r'dyvour|downpour|giaour|glamour|holour|inpour|outpour|pandour|paramour|pompadour|'
    r'recontour|repour|ryeflour|sompnour|tambour|troubadour|tregetour|velour')
# Spelling patterns for words of 6+ letters, tried in order; the first that matches
# (and is not excepted) rewrites every match in the word.
_PATTERNS = (
    (re.compile(r'haem(at)?o'), lambda m: f'hem{m.group(1) or ""}o', None),
    (re.compile(r'aemia$'), lambda m: 'emia', None),
    (re.compile(r'([lL])eukaem'), lambda m: f'{m.group(1)}eukem', None),
    (re.compile(r'programme(s?)$'), lambda m: f'program{m.group(1)}', None),
    (re.compile(r'^([a-z]{3,})our(s?)$'), lambda m: f'{m.group(1)}or{m.group(2)}',
     _OUR_EXCEPTIONS),
)
# -our- inflections the word table converts (favoured, honouring, ...).
_OUR_INFLECTED = re.compile(r'^(endeav|fav|flav|hon|hum|lab|rum|sav|discol)our(ed|ing)$')


def americanize(word: str) -> str:
  """British -> American spelling of one token, as written (so 'Colour' stays): a word
  table for 4+ letters, then spelling patterns for 6+ letters."""
  if len(word) < 4:
    return word
  if word in _AMERICAN:
    return _AMERICAN[word]
  for stem in _ISE_STEMS:
    for suffix in ('e', 'ed', 'ing', 'es'):
      if word == stem + suffix and not (stem == 'analys' and suffix == 'es'):
        return stem[:-1] + 'z' + suffix
  match = _OUR_INFLECTED.match(word)
  if match:
    return f'{match.group(1)}or{match.group(2)}'
  if len(word) < 6:
    return word
  for pattern, replacement, exceptions in _PATTERNS:
    if pattern.search(word) and not (exceptions and exceptions.search(word)):
      return pattern.sub(replacement, word)
  return word


# One token at the start of the remaining text of a whitespace-free chunk; tried in order.
_TOKEN = re.compile(r"""
    (?P<number>[-+]?\d+(?:[.,:/]\d+)*|\.\d+)
  | (?P<acronym>(?:[A-Za-z]\.){2,}(?![A-Za-z]))
  | (?P<word>[^\W_][\w&'/*-]*)
  | (?P<ellipsis>\.\.\.|\u2026)
  | (?P<dash>--+|\u2013|\u2014|\u2012|\u2015)
  | (?P<quote>``|''|"|\u201c|\u201d|\u2018|\u2019|'|`)
  | (?P<symbol>.)
""", re.VERBOSE | re.UNICODE)


def _split_clitics(word: str) -> list[str]:
  lower = word.lower()
  if lower in _SPLIT_WORDS:
    first, second = _SPLIT_WORDS[lower]
    return [word[:len(first)], word[len(first):]]
  for clitic in _CLITICS:
    if lower.endswith(clitic) and len(word) > len(clitic):
      return _split_clitics(word[:-len(clitic)]) + [word[-len(clitic):]]
  return [word]


def _trim_word(text: str) -> str:
  """A word ends before '--' and before trailing apostrophes, hyphens or joiners."""
  text = text.split('--', 1)[0]
  return text.rstrip("'&/*-")


def _escape(token: str) -> str:
  return token.replace('/', '\\/').replace('*', '\\*')


def _quote(mark: str, opening: bool) -> str:
  if mark in ('"', '``', "''", '\u201c', '\u201d'):
    return '``' if (mark in ('``', '\u201c') or (mark == '"' and opening)) else "''"
  return '`' if (mark in ('`', '\u2018') or (mark == "'" and opening)) else "'"


def _chunk_tokens(chunk: str) -> list[str]:
  tokens: list[str] = []
  position = 0
  while position < len(chunk):
    match = _TOKEN.match(chunk, position)
    kind, text = match.lastgroup, match.group()
    end = match.end()
    if kind == 'word':
      text = _trim_word(text)
      end = position + len(text)
      rest = chunk[end:]
      # A known abbreviation keeps its period (at the end of a line PTB adds a '.' token
      # after it, which the evaluation removes anyway).
      if rest.startswith('.') and not rest.startswith('..') and text.lower() in _ABBREVIATIONS:
        tokens.append(text + '.')
        end += 1
      else:
        tokens.extend(americanize(piece) for piece in _split_clitics(text))
    elif kind == 'number' or kind == 'acronym':
      tokens.append(text)
    elif kind == 'ellipsis':
      tokens.append('...')
    elif kind == 'dash':
      tokens.append('--')
    elif kind == 'quote':
      opening = position == 0 or chunk[position - 1] in '([{'
      archaic = _ARCHAIC_T.match(chunk, position) if text == "'" else None
      if archaic:  # 'tis, 'twas -> 't is, 't was
        tokens.extend(_split_clitics(archaic.group()))
        end = archaic.end()
      else:
        tokens.append(_quote(text, opening))
    elif text in _BRACKETS:
      tokens.append(_BRACKETS[text])
    elif text in ('\u00ad', '\u200b'):  # soft hyphen, zero-width space: dropped
      pass
    else:
      tokens.append(text)
    position = end
  return [_escape(token) for token in tokens]


def ptb_tokenize(text: str) -> list[str]:
  """PTB tokens of one line of text, lower-cased (before any punctuation is removed)."""
  tokens = []
  for chunk in text.split():
    tokens.extend(_chunk_tokens(chunk))
  return [token.lower() for token in tokens]


def coco_caption_tokens(text: str) -> str:
  """What pycocoevalcap's PTBTokenizer returns for a caption: tokens joined by spaces,
  punctuation removed (REMOVED_TOKENS)."""
  return ' '.join(token for token in ptb_tokenize(text) if token not in REMOVED_TOKENS)
