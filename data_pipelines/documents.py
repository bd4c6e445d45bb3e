"""Records to Documents: decoded pixels plus one token stream with image placeholder runs.

A `Document` is what the packer consumes: `tokens` int32 [T] where each image is a run of
exactly K `<image>` ids (K = the connector's token count), and `images` uint8 [N, S, S, 3]
holding the N images in the order of their runs. Layouts, with K image ids written <img>*K:

    captions     [bos] <img>*K caption [eos]
    interleaved  [bos] part part ... [eos]      image -> <img>*K, text -> its tokens
    text         [bos] text [eos]

Images are decoded by `images.open_image` (`load_image`), which refuses an image over
`max_pixels` (config key `data.max_image_pixels`) from its header, before decoding it.

Bad input costs as little as possible, and is always counted under a slug of
`skip_reasons.REASONS`:

* an image of an interleaved document that cannot be used is dropped with its placeholder
  run; the document keeps its text and its other images (consecutive texts around it are
  joined as if it had never been there) and counts the image in `dropped_images`;
* a record that cannot be used becomes a `Skipped` marker rather than an exception, so that
  the pipeline counts it: a caption whose image is bad (a caption without its image would
  teach the wrong thing), an empty caption or text, text without tokens, an interleaved
  document left with no text and no image.

`encode_parts` is the same encoding for a user's list of strings and images at inference
time; there bad input is the caller's error and raises.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Union

import grain
import numpy as np
from PIL import Image, ImageOps

from data_pipelines import images as images_lib
from data_pipelines import skip_reasons


@dataclasses.dataclass(frozen=True)
class Document:
  """One tokenised document: tokens int32 [T] and its images uint8 [N, S, S, 3].

  dropped_images: {slug: count} of the record's images left out of it (unusable images).
  """
  tokens: np.ndarray
  images: np.ndarray
  dropped_images: Mapping[str, int] = dataclasses.field(default_factory=dict)

  @property
  def num_images(self) -> int:
    return int(self.images.shape[0])


@dataclasses.dataclass(frozen=True)
class Skipped:
  """Marks a record that could not be turned into a Document, and why.

  reason: a one-line message naming the record; slug: its reason in skip_reasons.REASONS.
  dropped_images: {slug: count} of the images left out before the record was skipped.
  """
  reason: str
  slug: str = skip_reasons.MALFORMED_RECORD
  dropped_images: Mapping[str, int] = dataclasses.field(default_factory=dict)


Part = Union[str, Image.Image, np.ndarray, bytes]


RESIZE_MODES = ('crop', 'pad')


def load_image(image: Image.Image | np.ndarray | bytes, image_size: int,
               resize: str = 'crop', *,
               max_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
  """Decodes and fits an image to uint8 [S, S, 3].

  resize='crop': shorter side resized to S, centre crop (drops the margins of the longer
  side); resize='pad': longer side resized to S, centred on black (keeps the whole image).
  max_pixels: encoded bytes whose header says more pixels are refused before decoding.

  Raises ValueError (`images.ImageError`, with a `reason`, for encoded bytes) when the
  input is not a usable image.
  """
  if isinstance(image, (bytes, bytearray, memoryview)):
    pil = images_lib.open_image(bytes(image), max_pixels=max_pixels, draft_size=image_size)
  elif isinstance(image, np.ndarray):
    array = image
    if array.ndim == 2:
      array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
      raise ValueError(f'expected an image array [H, W, 3], got shape {array.shape}')
    if array.dtype != np.uint8:
      raise ValueError(f'expected a uint8 image array, got {array.dtype}')
    pil = Image.fromarray(array)
  elif isinstance(image, Image.Image):
    pil = image
  else:
    raise ValueError(f'not an image: {type(image).__name__}')
  if resize not in RESIZE_MODES:
    raise ValueError(f'unknown resize mode {resize!r} (one of {RESIZE_MODES})')
  pil = pil.convert('RGB')
  if pil.width == 0 or pil.height == 0:
    raise ValueError('image has no pixels')
  if resize == 'crop':
    fitted = ImageOps.fit(pil, (image_size, image_size), method=Image.Resampling.BICUBIC)
  else:
    fitted = ImageOps.pad(pil, (image_size, image_size), method=Image.Resampling.BICUBIC,
                          color=(0, 0, 0))
  return np.asarray(fitted, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class DocumentEncoder:
  """Holds what encoding needs: the tokenizer, the image size and the placeholder run."""
  tokenizer: Any
  image_size: int
  num_image_tokens: int
  image_token_id: int
  resize: str = 'crop'
  max_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS

  def decode(self, image: Part) -> np.ndarray:
    """An image part -> uint8 [S, S, 3]; raises ValueError (ImageError for bytes)."""
    return load_image(image, self.image_size, self.resize, max_pixels=self.max_pixels)

  def text_tokens(self, text: str) -> list[int]:
    ids = self.tokenizer.encode(text)
    # Text must never forge a placeholder: it would shift every image after it.
    return [self.tokenizer.unk_id if i == self.image_token_id else int(i) for i in ids]

  def image_run(self) -> list[int]:
    return [self.image_token_id] * self.num_image_tokens

  def no_images(self) -> np.ndarray:
    return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

  def assemble(self, parts: Sequence[Part], *, add_bos: bool, add_eos: bool) -> Document:
    """Encodes text and image parts in order; consecutive texts are joined by one space."""
    return self.assemble_decoded([p if isinstance(p, str) else self.decode(p) for p in parts],
                                 add_bos=add_bos, add_eos=add_eos)

  def assemble_decoded(self, parts: Sequence[str | np.ndarray], *, add_bos: bool,
                       add_eos: bool) -> Document:
    """`assemble` for parts whose images are decoded already (uint8 [S, S, 3])."""
    tokens = [self.tokenizer.bos_id] if add_bos else []
    images = []
    pending_text: list[str] = []

    def flush_text():
      if pending_text:
        tokens.extend(self.text_tokens(' '.join(pending_text)))
        pending_text.clear()

    for part in parts:
      if isinstance(part, str):
        if part.strip():
          pending_text.append(part.strip())
      else:
        flush_text()
        images.append(part)
        tokens.extend(self.image_run())
    flush_text()
    if add_eos:
      tokens.append(self.tokenizer.eos_id)
    pixels = np.stack(images) if images else self.no_images()
    return Document(tokens=np.asarray(tokens, np.int32), images=pixels)


def encode_parts(parts: Sequence[Part], tokenizer, *, image_size: int, num_image_tokens: int,
                 image_token_id: int = 4, add_bos: bool = True, add_eos: bool = False,
                 max_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS) -> Document:
  """A user's list of strings and images (PIL, uint8 array or encoded bytes) -> Document.

  For inference: a prompt usually leaves add_eos False so that generation continues it.
  Raises ValueError for parts that are neither text nor a decodable image (encoded bytes
  over max_pixels are refused before decoding).
  """
  encoder = DocumentEncoder(tokenizer, image_size, num_image_tokens, image_token_id,
                            max_pixels=max_pixels)
  return encoder.assemble(parts, add_bos=add_bos, add_eos=add_eos)


def _has_text_tokens(document: Document, encoder: DocumentEncoder, bos_eos: int) -> bool:
  return len(document.tokens) - bos_eos - document.num_images * encoder.num_image_tokens > 0


class RecordToDocument(grain.transforms.Map):
  """grain Map: a source record of one kind -> Document, or Skipped when unusable.

  max_pixels: images over this many pixels (config data.max_image_pixels) are refused
  from their header, before decoding.
  """

  def __init__(self, kind: str, tokenizer, *, image_size: int, num_image_tokens: int,
               image_token_id: int, resize: str = 'crop',
               max_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS):
    if kind not in ('captions', 'interleaved', 'text'):
      raise ValueError(f'unknown record kind {kind!r} (captions, interleaved, text)')
    self.kind = kind
    self.encoder = DocumentEncoder(tokenizer, image_size, num_image_tokens, image_token_id,
                                   resize, max_pixels)

  def map(self, record: dict) -> Document | Skipped:
    try:
      return getattr(self, f'_{self.kind}')(record)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
      # What PIL or the tokenizer signal for unreadable data; anything else is a bug.
      return self._skip(record, skip_reasons.MALFORMED_RECORD, str(error))

  def _skip(self, record: dict, slug: str, detail: str = '',
            dropped_images: Mapping[str, int] | None = None) -> Skipped:
    message = f'{self.kind} record {record.get("id")!r}: {slug.replace("_", " ")}'
    return Skipped(f'{message}: {detail}' if detail else message, slug,
                   dict(dropped_images or {}))

  def _captions(self, record: dict) -> Document | Skipped:
    caption = (record.get('caption') or '').strip()
    if not caption:
      return self._skip(record, skip_reasons.EMPTY_TEXT)
    try:
      image = self.encoder.decode(record.get('image') or b'')
    except ValueError as error:  # images.ImageError carries the reason
      return self._skip(record, skip_reasons.image_slug(error), str(error))
    document = self.encoder.assemble_decoded([image, caption], add_bos=True, add_eos=True)
    if not _has_text_tokens(document, self.encoder, 2):
      return self._skip(record, skip_reasons.NO_TEXT_TOKENS)
    return document

  def _interleaved(self, record: dict) -> Document | Skipped:
    parts: list[str | np.ndarray] = []
    dropped: collections.Counter[str] = collections.Counter()
    texts, images = record.get('texts') or [], record.get('images') or []
    for i in range(max(len(texts), len(images))):
      text = texts[i] if i < len(texts) else None
      image = images[i] if i < len(images) else None
      if image:
        try:
          parts.append(self.encoder.decode(image))
        except ValueError as error:  # the image goes, its document stays
          dropped[skip_reasons.image_slug(error)] += 1
      elif text and text.strip():
        parts.append(text)
    document = self.encoder.assemble_decoded(parts, add_bos=True, add_eos=True)
    if not document.num_images and not _has_text_tokens(document, self.encoder, 2):
      detail = f'{sum(dropped.values())} unusable images' if dropped else ''
      return self._skip(record, skip_reasons.EMPTY_DOCUMENT, detail, dropped)
    return dataclasses.replace(document, dropped_images=dict(dropped))

  def _text(self, record: dict) -> Document | Skipped:
    text = (record.get('text') or '').strip()
    if not text:
      return self._skip(record, skip_reasons.EMPTY_TEXT)
    document = self.encoder.assemble([text], add_bos=True, add_eos=True)
    if len(document.tokens) <= 2:
      return self._skip(record, skip_reasons.NO_TEXT_TOKENS)
    return document
