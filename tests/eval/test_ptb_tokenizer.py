"""The Python PTB tokenization against hand-worked outputs of the PTB rules."""

import pytest

from mm1_jax.eval.ptb_tokenizer import americanize, coco_caption_tokens, ptb_tokenize


@pytest.mark.parametrize('text, tokens', [
    ('A man riding a horse.', ['a', 'man', 'riding', 'a', 'horse', '.']),
    ("Don't stop; it's the dogs' toys.",
     ['do', "n't", 'stop', ';', 'it', "'s", 'the', 'dogs', "'", 'toys', '.']),
    ("I can't, we won't, they're, I'm, we've, he'd, she'll",
     ['i', 'ca', "n't", ',', 'we', 'wo', "n't", ',', 'they', "'re", ',', 'i', "'m", ',', 'we',
      "'ve", ',', 'he', "'d", ',', 'she', "'ll"]),
    ('I cannot, gonna go', ['i', 'can', 'not', ',', 'gon', 'na', 'go']),
    ('The U.S. flag, Mr. Smith etc.', ['the', 'u.s.', 'flag', ',', 'mr.', 'smith', 'etc.']),
    ('1,000 apples at 10:30 cost 3.50', ['1,000', 'apples', 'at', '10:30', 'cost', '3.50']),
    ('a black-and-white cat--sleeping...',
     ['a', 'black-and-white', 'cat', '--', 'sleeping', '...']),
    ('He said "hi" (twice) [sic] {ok}',
     ['he', 'said', '``', 'hi', "''", '-lrb-', 'twice', '-rrb-', '-lsb-', 'sic', '-rsb-',
      '-lcb-', 'ok', '-rcb-']),
    ('AT&T and/or 5*3', ['at&t', 'and\\/or', '5', '\\*', '3']),
    ('A 50% discount for $5 #1', ['a', '50', '%', 'discount', 'for', '$', '5', '#', '1']),
    ('Wait?! Really!', ['wait', '?', '!', 'really', '!']),
    ('in the centre, a grey colour', ['in', 'the', 'center', ',', 'a', 'gray', 'color']),
    ('line one\nline two', ['line', 'one', 'line', 'two']),
    ("'Tis cold, 'twas.", ["'t", 'is', 'cold', ',', "'t", 'was', '.']),
])
def test_ptb_tokens(text, tokens):
  assert ptb_tokenize(text) == tokens


def test_coco_caption_tokens_drop_punctuation_but_keep_lowercased_brackets():
  # pycocoevalcap's list names '-LRB-' in upper case; the tokens are lower case by then.
  assert coco_caption_tokens('A dog (brown), "happy"; running!') == \
      'a dog -lrb- brown -rrb- happy running'
  assert coco_caption_tokens("The dogs' ball.") == 'the dogs ball'


@pytest.mark.parametrize('word, american', [
    ('colour', 'color'), ('colours', 'colors'), ('neighbour', 'neighbor'),
    ('contour', 'contour'), ('glamour', 'glamour'), ('four', 'four'), ('your', 'your'),
    ('centre', 'center'), ('theatres', 'theaters'), ('realise', 'realize'),
    ('recognised', 'recognized'), ('travelled', 'traveled'), ('flavoured', 'flavored'),
    ('programme', 'program'), ('haemoglobin', 'hemoglobin'), ('anaemia', 'anemia'),
    ('Colour', 'Colour'),  # applied before lower-casing: capitalised words stay
])
def test_americanize(word, american):
  assert americanize(word) == american
