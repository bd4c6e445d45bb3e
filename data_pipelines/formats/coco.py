"""COCO captions annotations (captions_*.json) plus an image directory -> a captions source.

One record per annotation (an image with five captions gives five records sharing its
bytes), id `<image_id>/<annotation_id>`. An annotation whose image is not listed, whose
file is missing or empty, or whose caption is empty is skipped and counted.
"""

from __future__ import annotations

import collections
import json
import os

from data_pipelines.formats.common import UnitResult, read_file_bytes

IMAGES_PER_UNIT = 256


def load_units(annotations_path: str, images_dir: str) -> tuple[list, UnitResult]:
  """Work units of up to IMAGES_PER_UNIT images with their captions; and early skips."""
  with open(annotations_path, encoding='utf-8') as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f'--annotations {annotations_path!r} is not valid JSON: {error}') from None
  if not isinstance(data, dict) or 'annotations' not in data or 'images' not in data:
    raise ValueError(f'--annotations {annotations_path!r} is not a COCO captions file '
                     "(needs 'images' and 'annotations')")
  files = {image['id']: image['file_name'] for image in data['images']
           if isinstance(image, dict) and 'id' in image and 'file_name' in image}
  early = UnitResult()
  captions = collections.defaultdict(list)
  for annotation in data['annotations']:
    image_id = annotation.get('image_id') if isinstance(annotation, dict) else None
    if image_id not in files:
      early.skip('annotation of an unlisted image')
      continue
    captions[image_id].append((annotation.get('id', len(captions[image_id])),
                               annotation.get('caption')))
  images = [(image_id, os.path.join(images_dir, files[image_id]), captions[image_id])
            for image_id in sorted(captions)]
  units = [images[i:i + IMAGES_PER_UNIT] for i in range(0, len(images), IMAGES_PER_UNIT)]
  return units, early


def read_images(unit: list) -> UnitResult:
  result = UnitResult()
  for image_id, path, captions in unit:
    image = read_file_bytes(path)
    for annotation_id, caption in captions:
      if image is None:
        result.skip('missing image file')
      elif not isinstance(caption, str) or not caption.strip():
        result.skip('empty caption')
      else:
        result.examples.append({'id': f'{image_id}/{annotation_id}', 'image': image,
                                'caption': caption.strip()})
  return result
