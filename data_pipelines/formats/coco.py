"""COCO captions annotations (captions_*.json) plus an image directory -> a captions source.

One record per annotation (an image with five captions gives five records sharing its
bytes), id `<image_id>/<annotation_id>`. An image's `file_name` is read only inside the
images directory (see image_files.py) and must pass the decode check with the pixel
bound; the stored bytes are the original ones.

Skipped and counted, never fatal: an image entry that is not `{'id': int or str,
'file_name': str}` (MALFORMED_IMAGE) or repeats an earlier id (DUPLICATE_IMAGE; the
first is kept); an annotation that is not `{'id', 'image_id', 'caption'}` with an int or
str id (MALFORMED_ANNOTATION), repeats an earlier annotation id (DUPLICATE_ANNOTATION;
the first is kept), names an unlisted image, has an empty caption or one that is not
valid UTF-8; and every annotation of an image that cannot be used, with the image's
reason. The annotations file itself must be UTF-8 JSON in the COCO layout: anything else
is one error naming the file.
"""

from __future__ import annotations

import functools
import json

from data_pipelines import images as images_lib
from data_pipelines.formats import common, image_files
from data_pipelines.formats.common import UnitResult

IMAGES_PER_UNIT = 256

MALFORMED_IMAGE = 'malformed image entry'
DUPLICATE_IMAGE = 'duplicate image id'
MALFORMED_ANNOTATION = 'malformed annotation'
DUPLICATE_ANNOTATION = 'duplicate annotation id'
UNLISTED_IMAGE = 'annotation of an unlisted image'
EMPTY_CAPTION = 'empty caption'


def _is_id(value) -> bool:
  return isinstance(value, (int, str)) and not isinstance(value, bool)


def _load_json(annotations_path: str):
  with open(annotations_path, 'rb') as f:
    raw = f.read()
  try:
    return json.loads(raw.decode('utf-8'))
  except UnicodeDecodeError as error:
    raise ValueError(f'--annotations {annotations_path!r} is not valid UTF-8 '
                     f'(byte {error.start})') from None
  except json.JSONDecodeError as error:
    raise ValueError(f'--annotations {annotations_path!r} is not valid JSON: {error}') from None


def _image_files(entries: list, early: UnitResult) -> dict:
  """{image id: file_name} of the well-formed image entries, the first of each id."""
  files = {}
  for index, image in enumerate(entries):
    if not (isinstance(image, dict) and _is_id(image.get('id'))
            and isinstance(image.get('file_name'), str) and image['file_name']):
      early.skip(MALFORMED_IMAGE, f'images[{index}]')
    elif image['id'] in files:
      early.skip(DUPLICATE_IMAGE, f'image {image["id"]}')
    else:
      files[image['id']] = image['file_name']
  return files


def load_units(annotations_path: str, images_dir: str) -> tuple[list, UnitResult]:
  """Work units of up to IMAGES_PER_UNIT images with their captions; and early skips.

  A unit is (images_dir, [(image_id, file_name, [(record id, caption), ...]), ...]).
  """
  data = _load_json(annotations_path)
  if (not isinstance(data, dict) or not isinstance(data.get('annotations'), list)
      or not isinstance(data.get('images'), list)):
    raise ValueError(f'--annotations {annotations_path!r} is not a COCO captions file '
                     "(needs the lists 'images' and 'annotations')")
  early = UnitResult()
  files = _image_files(data['images'], early)
  captions, seen = {}, set()
  for index, annotation in enumerate(data['annotations']):
    if not (isinstance(annotation, dict) and _is_id(annotation.get('id'))
            and _is_id(annotation.get('image_id'))):
      early.skip(MALFORMED_ANNOTATION, f'annotations[{index}]')
      continue
    image_id, annotation_id = annotation['image_id'], annotation['id']
    where = common.safe_name(f'{image_id}/{annotation_id}')
    if annotation_id in seen:
      early.skip(DUPLICATE_ANNOTATION, where)
      continue
    seen.add(annotation_id)
    if image_id not in files:
      early.skip(UNLISTED_IMAGE, where)
      continue
    caption = annotation.get('caption')
    if not isinstance(caption, str) or not caption.strip():
      early.skip(EMPTY_CAPTION, where)
    elif not common.is_valid_text(caption):
      early.skip(common.INVALID_UTF8, where)
    else:
      captions.setdefault(image_id, []).append((where, caption.strip()))
  images = [(image_id, files[image_id], captions[image_id])
            for image_id in sorted(captions, key=lambda i: (isinstance(i, str), i))]
  units = [(images_dir, images[i:i + IMAGES_PER_UNIT])
           for i in range(0, len(images), IMAGES_PER_UNIT)]
  return units, early


def read_images(unit: tuple, *,
                max_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS) -> UnitResult:
  """The records of one unit of load_units: each image read and checked once."""
  images_dir, images = unit
  root = image_files.ImageRoot(images_dir, max_pixels=max_pixels)
  result = UnitResult()
  for _, file_name, captions in images:
    data, reason = root.load(file_name)
    for where, caption in captions:
      if reason:
        result.skip(reason, where)
      else:
        result.examples.append({'id': where, 'image': data, 'caption': caption})
  return result


def reader(max_pixels: int):
  """read_images with a pixel bound, picklable for worker processes."""
  return functools.partial(read_images, max_pixels=max_pixels)
