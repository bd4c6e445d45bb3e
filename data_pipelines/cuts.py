"""Where a document may be cut into row pieces, and fitting its images to a row first.

Both packers cut documents that do not fit a row (`packing.split_document` for whole
packing, `fill_packing` to fill rows); each piece becomes a segment of its own, whose last
token has no target. A piece teaches something only when one of its tokens is the target
of a text position: a text token (any id but `<image>`) at index >= 1 of the piece. So:

* an image belongs to the text after it: a cut falls only right after a text token (never
  inside an image run, never between an image and the text that follows it);
* both sides of a cut keep a target: the head ends with a text token at index >= 1 (it is
  at least two tokens long) and the tail holds a text token at index >= 1.

Such a cut exists whenever a piece fits no empty row whole, provided the document was
first fitted by `fit_images`. Read the document as atoms, each the (possibly empty) block
of images before a text token plus that token, the images after the last text token
joining the last atom. With B = min(max_images, (seq_len - 3) // K) for K tokens per image,
`fit_images` keeps at most B images in every block (it drops the ones furthest from their
text) and at most B images in the document's last group (the last atom, or the last two
when the last has no images before its text; surplus images after the last text token are
dropped first). An empty row then always takes the first atom (or the first two when the
first is a lone text token) and still leaves a tail with a target, or takes the whole
rest: so every piece of every row carries loss tokens. The images dropped are counted
under skip_reasons.ROW_FULL.

A document without any target (a lone text token, only images) is not fitted or cut by
this rule: the packer skips it and counts it (skip_reasons.NO_LOSS_TOKENS).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from data_pipelines.documents import Document


def image_run_starts(tokens: np.ndarray, *, num_image_tokens: int,
                     image_token_id: int) -> np.ndarray:
  """Start positions of the image placeholder runs (each exactly K ids long)."""
  positions = np.flatnonzero(tokens == image_token_id)
  starts = positions[::num_image_tokens]
  expected = starts[:, None] + np.arange(num_image_tokens)[None, :]
  if len(positions) % num_image_tokens or not np.array_equal(expected.ravel(), positions):
    raise ValueError(f'image placeholder ids do not form runs of exactly {num_image_tokens}')
  return starts


def has_target(tokens: np.ndarray, image_token_id: int) -> bool:
  """Whether a segment of these tokens has a text target (a text token at index >= 1)."""
  return bool(np.any(tokens[1:] != image_token_id))


def text_positions(tokens: np.ndarray, image_token_id: int) -> list[int]:
  """Positions of the text tokens (all but `<image>`), ascending."""
  return np.flatnonzero(tokens != image_token_id).tolist()


def images_per_block(*, seq_len: int, max_images: int, num_image_tokens: int) -> int:
  """B: the most images before one text token that an empty row takes with a target."""
  return max(0, min(max_images, (seq_len - 3) // num_image_tokens))


def fit_images(document: Document, *, seq_len: int, max_images: int, num_image_tokens: int,
               image_token_id: int) -> tuple[Document, int]:
  """The document with surplus images dropped (see the module doc), and how many.

  Returns the document itself when nothing is dropped or when it has no target.
  """
  tokens = document.tokens
  if not len(document.images) or not has_target(tokens, image_token_id):
    return document, 0
  runs = image_run_starts(tokens, num_image_tokens=num_image_tokens,
                          image_token_id=image_token_id)
  if len(runs) != len(document.images):
    raise ValueError(f'document has {len(runs)} image runs but {len(document.images)} images')
  texts = np.asarray(text_positions(tokens, image_token_id))
  atoms = len(texts)
  limit = images_per_block(seq_len=seq_len, max_images=max_images,
                           num_image_tokens=num_image_tokens)
  # The atom of each run: the index of the text token after it (`atoms`: after the last).
  atom_of_run = np.searchsorted(texts, runs)
  per_atom = np.bincount(atom_of_run, minlength=atoms + 1)
  # Rank of each run inside its block: 0 for the first image of the block.
  first_of_block = np.cumsum(per_atom) - per_atom
  rank = np.arange(len(runs)) - first_of_block[atom_of_run]
  size = per_atom[atom_of_run]
  in_text_block = atom_of_run < atoms
  # Before a text token: keep the last `limit` images (the ones next to their text).
  keep = ~in_text_block | (rank >= size - limit)
  kept_per_atom = np.minimum(per_atom[:atoms], limit)
  group = kept_per_atom[-1] if kept_per_atom[-1] or atoms < 2 else kept_per_atom[-2]
  # After the last text token: keep the first ones that the last group has room for.
  keep &= in_text_block | (rank < max(0, limit - int(group)))
  dropped = int(len(runs) - keep.sum())
  if not dropped:
    return document, 0
  token_keep = np.ones(len(tokens), bool)
  for start in runs[~keep]:
    token_keep[start:start + num_image_tokens] = False
  return Document(tokens=tokens[token_keep], images=document.images[keep]), dropped


def largest_cut(run_starts: Sequence[int], length: int, *, room_tokens: int,
                room_images: int, num_image_tokens: int, min_head: int, min_tail: int,
                text_positions: Sequence[int] | None = None) -> int:  # pylint: disable=redefined-outer-name
  """The longest head [0, cut) of a document that a row with the given room can take.

  `run_starts` are the document's image run starts (sorted), `length` its token count.
  The head holds at most room_tokens tokens and room_images runs, and head and tail keep
  at least min_head and min_tail tokens. Without `text_positions` the cut only leaves
  whole image runs on both sides; with them (the document's text token positions,
  sorted) it also follows the module doc's rule: right after a text token, a target on
  both sides. Returns 0 when no such cut exists.
  """
  cut = min(room_tokens, length - min_tail)
  if room_images < len(run_starts):
    cut = min(cut, run_starts[room_images])  # the run after the last allowed one
  if text_positions is not None:
    if not text_positions:
      return 0
    cut = min(cut, text_positions[-1] - 1)  # the last text token stays a target in the tail
    before = bisect.bisect_left(text_positions, cut) - 1  # the last text token before cut
    cut = text_positions[before] + 1 if before >= 0 else 0
    return cut if cut >= max(min_head, 2) else 0
  inside = bisect.bisect_left(run_starts, cut) - 1  # the last run that starts before cut
  if inside >= 0 and run_starts[inside] + num_image_tokens > cut:
    cut = run_starts[inside]  # the cut would split that run: the run goes to the tail
  return cut if cut >= max(min_head, 1) else 0
