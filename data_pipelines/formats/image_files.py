"""Images named by the data: read only under one root, only up to a size, only if they decode.

The records an importer reads name their images (an OBELICS `images` path, an MMC4
`image_name`, a COCO `file_name`). Such a name is data, not an instruction: `ImageRoot`
reads it only as a path inside the images root the user gave (or the input file's
directory). An absolute path, a path starting with `~`, one that leaves the root through
`..`, and one whose real path (symlinks followed) lies outside the root's real path are
refused with OUTSIDE_ROOT, and none of their bytes are read. A root that holds symlinks
to files elsewhere (a Hugging Face cache snapshot, say) is therefore refused too: point
the root at a directory holding the link targets.

Every image, from a file or given inline as bytes, must pass `images.check_image` (the
decode check with the pixel bound, the same one training uses) before it is stored; the
bytes stored are the original bytes. A file larger than `max_image_bytes(max_pixels)`
is refused by its size before it is read. Refusals return a reason (a short, stable
phrase, one of REASONS) for the import report.
"""

from __future__ import annotations

import os
import stat

from data_pipelines import images

OUTSIDE_ROOT = 'image path outside the images root'
MISSING_FILE = 'missing image file'
OVER_SIZE = 'image file over the size bound'
REASONS = (OUTSIDE_ROOT, MISSING_FILE, OVER_SIZE) + images.REASONS

# Bytes an encoded image may take per pixel of its bound: 16-bit RGBA stored without
# compression is 8, plus room for metadata (ICC profiles, EXIF, thumbnails).
_BYTES_PER_PIXEL = 8
_METADATA_BYTES = 2**20


def max_image_bytes(max_pixels: int) -> int:
  """The size above which an image file cannot hold an image within `max_pixels`.

  0 (no bound) when max_pixels is 0 or less.
  """
  if max_pixels <= 0:
    return 0
  return _BYTES_PER_PIXEL * max_pixels + _METADATA_BYTES


def check_bytes(data: bytes, max_pixels: int) -> str | None:
  """None when the encoded image `data` is usable, else the reason (images.REASONS)."""
  return images.check_image(data, max_pixels=max_pixels)


class ImageRoot:
  """Reads and checks image files named relative to one directory, never outside it."""

  def __init__(self, root: str, *, max_pixels: int = images.DEFAULT_MAX_IMAGE_PIXELS):
    self.root = os.path.realpath(root)
    self.max_pixels = max_pixels
    self.max_bytes = max_image_bytes(max_pixels)

  def resolve(self, name: str) -> str | None:
    """The real path of `name` inside the root, or None when it is not inside."""
    if not name or '\0' in name or name.startswith('~') or os.path.isabs(name):
      return None
    path = os.path.realpath(os.path.join(self.root, name))
    if os.path.commonpath([self.root, path]) != self.root:
      return None
    return path

  def load(self, name: str) -> tuple[bytes | None, str | None]:
    """(the file's bytes, None) for a usable image, else (None, the reason)."""
    path = self.resolve(name)
    if path is None:
      return None, OUTSIDE_ROOT
    try:
      # Non-blocking open, so that a FIFO among the images cannot stall the import;
      # fstat on the opened file, so that what is read is what was checked.
      with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), 'rb') as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
          return None, MISSING_FILE
        if self.max_bytes and info.st_size > self.max_bytes:
          return None, OVER_SIZE
        data = f.read(self.max_bytes + 1 if self.max_bytes else -1)
    except OSError:
      return None, MISSING_FILE
    if self.max_bytes and len(data) > self.max_bytes:  # grew after the fstat
      return None, OVER_SIZE
    reason = check_bytes(data, self.max_pixels)
    return (None, reason) if reason else (data, None)
