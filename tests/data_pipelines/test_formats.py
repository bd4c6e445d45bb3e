"""Importers on small files in each real format, written here; skips counted per reason."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipelines import grain_pipeline
from data_pipelines.formats import coco, common, image_files, interleaved, text, webdataset
from data_pipelines.sources import open_source
from tests.data_pipelines.conftest import corrupt_image, encode_png, small_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _add(tar, name, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope='module')
def raw(tmp_path_factory):
  """Raw inputs of every format, with known bad records."""
  root = tmp_path_factory.mktemp('raw')
  rng = np.random.default_rng(7)
  for shard in range(2):
    with tarfile.open(root / f'shard{shard}.tar', 'w') as tar:
      for i in range(6):
        key = f'{shard:02d}/{i:04d}'
        image = corrupt_image(rng, 1) if i == 1 else encode_png(rng, 20, 28)
        _add(tar, f'{key}.png' if i % 2 else f'{key}.jpg', image)  # extension is a label
        if i == 2:
          _add(tar, f'{key}.json', json.dumps({'caption': f'json caption {i}'}).encode())
        elif i != 3:  # sample 3: no caption
          _add(tar, f'{key}.txt', f'a caption {shard} {i}'.encode())
      _add(tar, f'{shard:02d}/9999.txt', b'caption without image')
  (root / 'images').mkdir()
  images, annotations = [], []
  for image_id in range(5):
    name = f'COCO_{image_id:012d}.png'
    images.append({'id': image_id, 'file_name': name})
    if image_id != 4:  # image 4's file is missing
      (root / 'images' / name).write_bytes(encode_png(rng, 24, 24))
    for k in range(2):
      annotations.append({'id': image_id * 10 + k, 'image_id': image_id,
                          'caption': '' if (image_id, k) == (0, 1) else f'coco {image_id} {k}'})
  annotations.append({'id': 999, 'image_id': 77, 'caption': 'no such image'})
  (root / 'captions.json').write_text(json.dumps({'images': images,
                                                  'annotations': annotations}))
  (root / 'pic.png').write_bytes(encode_png(rng, 30, 30))
  documents = {'texts': [['first text', None, 'after the image'], [None, None]],
               'images': [[None, encode_png(rng, 16, 16), None], [None, None]]}
  pq.write_table(pa.table(documents), root / 'obelics.parquet')  # images as bytes
  with open(root / 'obelics.jsonl', 'w') as f:  # images as paths
    f.write(json.dumps({'texts': [None, 'only a path image'], 'images': ['pic.png', None]}))
    f.write('\n' + json.dumps({'texts': ['a missing image', None],
                               'images': [None, 'gone.png']}) + '\n')
  with open(root / 'mmc4.jsonl', 'w') as f:
    f.write(json.dumps({'text_list': ['one', 'two'],
                        'image_info': [{'image_name': 'pic.png', 'matched_text_index': 1}]}))
    f.write('\n{not json\n')
    f.write(json.dumps({'text_list': [], 'image_info': []}) + '\n')
  with open(root / 'texts.jsonl', 'w') as f:
    for line in [{'text': 'hello world'}, {'text': '  '}, {'body': 'x'}, {'text': 'more'}]:
      f.write(json.dumps(line) + '\n')
  pq.write_table(pa.table({'text': ['parquet text', '']}), root / 'texts.parquet')
  return root


def _import(kind, units, read_unit, out, **kwargs):
  return common.run_import(kind, units, read_unit, out=str(out), show_progress=False, **kwargs)


@pytest.fixture(scope='module')
def prepared(raw, tmp_path_factory):
  out = tmp_path_factory.mktemp('prepared')
  reports = {
      'wds': _import('captions', common.expand_inputs([str(raw / '*.tar')]),
                     webdataset.read_shard, out / 'wds', num_shards=2),
      'text': _import('text', common.expand_inputs([str(raw / 'texts.*')]), text.read_texts,
                      out / 'text'),
      'docs': _import('interleaved', [(str(raw / 'obelics.parquet'), None),
                                      (str(raw / 'obelics.jsonl'), None),
                                      (str(raw / 'mmc4.jsonl'), None)],
                      interleaved.read_documents, out / 'docs'),
  }
  units, early = coco.load_units(str(raw / 'captions.json'), str(raw / 'images'))
  reports['coco'] = _import('captions', units, coco.read_images, out / 'coco',
                            skipped_before=early)
  return out, reports


def test_webdataset(prepared):
  out, reports = prepared
  source = open_source(str(out / 'wds'), 'captions')
  records = {source[i]['id']: source[i] for i in range(len(source))}
  # 2 shards x (6 - 1 without caption - 1 undecodable)
  assert len(records) == 8 == reports['wds'].written
  assert records['shard0.tar/00/0002']['caption'] == 'json caption 2'
  assert records['shard1.tar/01/0000']['caption'] == 'a caption 1 0'
  assert reports['wds'].skipped == {'sample without caption': 2, 'sample without image': 2,
                                    'undecodable image': 2}
  assert reports['wds'].first_skipped['undecodable image'] == [
      'shard0.tar/00/0001', 'shard1.tar/01/0001']
  assert len([f for f in os.listdir(source.dataset_dir) if 'array_record' in f]) == 2
  assert json.loads((out / 'wds' / common.REPORT_FILE).read_text())['written'] == 8


def test_coco(prepared):
  out, reports = prepared
  source = open_source(str(out / 'coco'), 'captions')
  ids = sorted(source[i]['id'] for i in range(len(source)))
  assert ids == ['0/0', '1/10', '1/11', '2/20', '2/21', '3/30', '3/31']
  assert reports['coco'].skipped == {'missing image file': 2, 'empty caption': 1,
                                     'annotation of an unlisted image': 1}


def test_interleaved(prepared, raw):
  out, reports = prepared
  source = open_source(str(out / 'docs'), 'interleaved')
  records = {source[i]['id']: source[i] for i in range(len(source))}
  first = records['obelics.parquet/0']
  assert first['texts'] == ['first text', '', 'after the image']
  assert first['images'][0] == b'' and first['images'][1][:4] == b'\x89PNG'
  assert records['obelics.jsonl/0']['images'][0] == (raw / 'pic.png').read_bytes()
  assert records['obelics.jsonl/1']['texts'] == ['a missing image']  # image dropped
  assert records['mmc4.jsonl/0']['texts'] == ['one', '', 'two']  # image before sentence 1
  assert reports['docs'].skipped == {'empty document': 2, 'missing image file': 1,
                                     'malformed json line': 1}


def test_text(prepared):
  out, reports = prepared
  source = open_source(str(out / 'text'), 'text')
  assert sorted(source[i]['text'] for i in range(len(source))) == [
      'hello world', 'more', 'parquet text']
  assert reports['text'].skipped == {'empty text': 2, 'record without a text field': 1}


def test_imported_sources_feed_the_pipeline(prepared, data_root):
  """Two caption sources (any number per kind), skips counted per source."""
  out, _ = prepared
  config = small_config(str(data_root))
  config.data.sources.captions.path = str(out / 'wds')
  config.data.sources.coco = dict(kind='captions', path=str(out / 'coco'))
  config.data.sources.interleaved.path = str(out / 'docs')
  config.data.sources.text.path = str(out / 'text')
  config.data.weights.coco = 0.2
  names = grain_pipeline.source_names(config)
  iterator = grain_pipeline.make_iterator(config)
  skipped = np.zeros(len(names))
  seen = set()
  for _ in range(6):
    batch = next(iterator)
    seen |= set(batch['source_id'].tolist())
    skipped += np.bincount(batch['source_id'], weights=batch['skipped_records'],
                           minlength=len(names))
  assert seen == set(range(len(names)))
  # The corrupt image of each tar shard was refused at import: training skips none.
  assert skipped[names.index('captions')] == 0


def test_cli_with_workers_and_errors(raw, tmp_path):
  def prepare(*args):
    return subprocess.run([sys.executable, '-m', 'data_pipelines.prepare', *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  out = tmp_path / 'wds'
  result = prepare('webdataset', '--input', str(raw / '*.tar'), '--out', str(out),
                   '--num-workers', '2', '--num-shards', '3')
  assert result.returncode == 0, result.stderr
  assert 'Wrote 8 captions records' in result.stdout and 'skipped 6' in result.stdout
  assert 'undecodable image: 2 (first: shard0.tar/00/0001, shard1.tar/01/0001)' in result.stdout
  again = prepare('webdataset', '--input', str(raw / '*.tar'), '--out', str(out))
  assert again.returncode == 1 and 'already holds' in again.stderr
  missing = prepare('text', '--input', str(raw / 'nothing*.jsonl'), '--out', str(tmp_path / 't'))
  assert missing.returncode == 1 and 'matches no file' in missing.stderr
  assert 'Traceback' not in missing.stderr


# ------------------------------------------------------- what the data may not make us do


def _records(out, kind):
  source = open_source(str(out), kind)
  return {source[i]['id']: source[i] for i in range(len(source))}


def _stored_images(records) -> list[bytes]:
  return [r['image'] for r in records.values() if 'image' in r] + [
      b for r in records.values() for b in r.get('images', []) if b]


@pytest.fixture
def traversal(tmp_path, monkeypatch):
  """An images root and image names leading out of it, to a valid image (a 'secret')."""
  rng = np.random.default_rng(3)
  secret = encode_png(rng, 9, 9)  # decodes: only the path check can keep it out
  (tmp_path / 'secret.png').write_bytes(secret)
  (tmp_path / 'home').mkdir()
  (tmp_path / 'home' / 'secret.png').write_bytes(secret)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  root = tmp_path / 'root'
  root.mkdir()
  good = encode_png(rng, 8, 8)
  (root / 'good.png').write_bytes(good)
  (root / 'inside.png').symlink_to(root / 'good.png')  # a link within the root is fine
  (root / 'link.png').symlink_to(tmp_path / 'secret.png')
  outside = [str(tmp_path / 'secret.png'), '~/secret.png', '../secret.png', 'link.png',
             str(root / 'good.png')]  # absolute paths are refused even into the root
  return root, outside, ['good.png', 'inside.png'], secret, good


def test_interleaved_reads_no_image_outside_its_root(traversal, tmp_path):
  root, outside, inside, secret, good = traversal
  with open(root / 'docs.jsonl', 'w') as f:
    for name in outside + inside:  # OBELICS style
      f.write(json.dumps({'texts': ['text', None], 'images': [None, name]}) + '\n')
    for name in outside + inside:  # MMC4 style
      f.write(json.dumps({'text_list': ['text'],
                          'image_info': [{'image_name': name, 'matched_text_index': 0}]}) + '\n')
  report = _import('interleaved', [(str(root / 'docs.jsonl'), None)],
                   interleaved.read_documents, tmp_path / 'out')
  assert report.skipped == {image_files.OUTSIDE_ROOT: 10}
  assert report.first_skipped[image_files.OUTSIDE_ROOT] == [f'docs.jsonl/{i}' for i in range(5)]
  records = _records(tmp_path / 'out', 'interleaved')
  assert len(records) == 14 == report.written  # the documents keep their text
  assert records['docs.jsonl/0'] == {'id': 'docs.jsonl/0', 'texts': ['text'], 'images': [b'']}
  assert secret not in _stored_images(records)
  assert _stored_images(records) == [good] * 4


def test_coco_reads_no_image_outside_its_root(traversal, tmp_path):
  root, outside, inside, secret, good = traversal
  names = outside + inside
  (tmp_path / 'captions.json').write_text(json.dumps({
      'images': [{'id': i, 'file_name': name} for i, name in enumerate(names)],
      'annotations': [{'id': 100 + i, 'image_id': i, 'caption': f'c{i}'}
                      for i in range(len(names))]}))
  units, early = coco.load_units(str(tmp_path / 'captions.json'), str(root))
  report = _import('captions', units, coco.read_images, tmp_path / 'out', skipped_before=early)
  assert report.skipped == {image_files.OUTSIDE_ROOT: 5}
  assert report.first_skipped[image_files.OUTSIDE_ROOT] == [
      '0/100', '1/101', '2/102', '3/103', '4/104']
  records = _records(tmp_path / 'out', 'captions')
  assert sorted(records) == ['5/105', '6/106']
  assert _stored_images(records) == [good, good]


# ------------------------------------------------ malformed records: skipped, counted, named


def _parquet_with_invalid_utf8(path, texts: list[bytes]):
  """A parquet file whose string column holds `texts` unchecked (as other writers can)."""
  binary = pa.array(texts, type=pa.binary())
  pq.write_table(pa.table({'text': pa.Array.from_buffers(pa.string(), len(texts),
                                                         binary.buffers())}), path)


def test_interleaved_malformed_records(tmp_path):
  rng = np.random.default_rng(5)
  (tmp_path / 'pic.png').write_bytes(encode_png(rng, 8, 8))
  lines = [
      {'texts': 'a string', 'images': [None]},  # 0: never iterated by character
      {'texts': ['ok', None], 'images': [None, 'pic.png', None]},  # 1: lengths differ
      {'texts': ['both'], 'images': ['pic.png']},  # 2: text and image at one index
      {'texts': [7], 'images': [None]},  # 3: a text that is not a string
      {'texts': ['lone \udc80 surrogate'], 'images': [None]},  # 4: not valid UTF-8
      {'text_list': ['one', 'two'], 'image_info': [  # 5: kept, two images dropped
          {'image_name': 'pic.png', 'matched_text_index': None},
          {'image_name': 'pic.png', 'matched_text_index': 2},
          {'image_name': 'pic.png', 'matched_text_index': 1}]},
      {'text_list': ['one'], 'image_info': [{'image_name': 'pic.png',
                                             'matched_text_index': '0'}]},  # 6: kept
      {'text_list': 'one two', 'image_info': []},  # 7: wrong type
      {'text_list': ['one'], 'image_info': ['pic.png']},  # 8: wrong type
      {'texts': ['good', None], 'images': [None, 'pic.png']},  # 9: kept
      {'texts': ['same id'], 'images': [None]},  # 10: kept (the duplicate is elsewhere)
      {'texts': [None], 'images': [{'src': 'pic.png'}]},  # 11: a struct without bytes/path
  ]
  with open(tmp_path / 'docs.jsonl', 'wb') as f:
    for line in lines:
      f.write(json.dumps(line).encode() + b'\n')
    f.write('{"texts": ["caf\xe9"], "images": [null]}\n'.encode('latin-1'))  # 12
  (tmp_path / 'broken.parquet').write_bytes(b'PAR1 not really parquet')
  (tmp_path / 'notes.md').write_text('# not data')
  units = [(str(tmp_path / 'docs.jsonl'), None), (str(tmp_path / 'broken.parquet'), None),
           (str(tmp_path / 'notes.md'), None),
           (str(tmp_path / 'docs.jsonl'), None)]  # the same file again: duplicate ids
  report = _import('interleaved', units, interleaved.read_documents, tmp_path / 'out')
  once = {
      common.wrong_type('texts'): 2, interleaved.LENGTHS_DIFFER: 1, interleaved.BOTH_SET: 1,
      common.INVALID_UTF8: 2, interleaved.BAD_TEXT_INDEX: 2,
      interleaved.TEXT_INDEX_OUT_OF_RANGE: 1, common.wrong_type('text_list'): 1,
      common.wrong_type('image_info'): 1, common.wrong_type('images'): 1}
  assert report.skipped == {**{reason: 2 * n for reason, n in once.items()},
                            common.UNREADABLE_FILE: 1, common.UNKNOWN_FILE_TYPE: 1,
                            common.DUPLICATE_ID: 4}
  first = report.first_skipped
  assert first[common.wrong_type('texts')] == ['docs.jsonl/0', 'docs.jsonl/3', 'docs.jsonl/0',
                                               'docs.jsonl/3']
  assert first[common.INVALID_UTF8][:2] == ['docs.jsonl/4', 'docs.jsonl/12']
  assert first[interleaved.BAD_TEXT_INDEX][:2] == ['docs.jsonl/5', 'docs.jsonl/6']
  assert first[common.UNREADABLE_FILE] == ['broken.parquet']
  assert first[common.UNKNOWN_FILE_TYPE] == ['notes.md']
  assert first[common.DUPLICATE_ID] == ['docs.jsonl/5', 'docs.jsonl/6', 'docs.jsonl/9',
                                        'docs.jsonl/10']
  records = _records(tmp_path / 'out', 'interleaved')
  assert sorted(records) == ['docs.jsonl/10', 'docs.jsonl/5', 'docs.jsonl/6', 'docs.jsonl/9']
  assert records['docs.jsonl/5']['texts'] == ['one', '', 'two']  # the in-range image only
  assert records['docs.jsonl/6']['texts'] == ['one']


def test_text_malformed_records(tmp_path):
  with open(tmp_path / 'a.jsonl', 'wb') as f:
    f.write(b'{"text": ["a", "list"]}\n{"text": "fine"}\n{"text": "caf\xe9"}\n'
            b'{"text": "\\udc80"}\n[1]\n{"text": 3}\n')
  _parquet_with_invalid_utf8(tmp_path / 'b.parquet', [b'good', b'caf\xe9', b'also good'])
  (tmp_path / 'c.parquet').write_bytes(b'not parquet at all')
  units = [str(tmp_path / name) for name in ('a.jsonl', 'b.parquet', 'c.parquet')]
  report = _import('text', units, text.read_texts, tmp_path / 'out')
  assert report.skipped == {common.wrong_type('text'): 2, common.INVALID_UTF8: 3,
                            common.NOT_AN_OBJECT: 1, common.UNREADABLE_FILE: 1}
  assert report.first_skipped[common.INVALID_UTF8] == ['a.jsonl/2', 'a.jsonl/3', 'b.parquet/1']
  assert sorted(r['text'] for r in _records(tmp_path / 'out', 'text').values()) == [
      'also good', 'fine', 'good']


def test_coco_malformed_entries(tmp_path):
  rng = np.random.default_rng(6)
  (tmp_path / 'images').mkdir()
  for name in ('a.png', 'b.png'):
    (tmp_path / 'images' / name).write_bytes(encode_png(rng, 8, 8))
  (tmp_path / 'captions.json').write_text(json.dumps({
      'images': [{'id': 1, 'file_name': 'a.png'}, {'id': 1, 'file_name': 'b.png'},
                 {'id': 2, 'file_name': 'b.png'}, {'id': 3}, 'not an image'],
      'annotations': [
          {'id': 10, 'image_id': 1, 'caption': 'first'},
          {'id': 10, 'image_id': 2, 'caption': 'same id again'},
          {'id': 11, 'image_id': 2, 'caption': 'second'},
          {'id': 12, 'image_id': 2, 'caption': ['not', 'text']},
          {'id': 13, 'image_id': 2, 'caption': 'lone \udc80'},
          {'image_id': 2, 'caption': 'no id'},
          {'id': 14, 'image_id': 3, 'caption': 'image 3 is malformed'}]}))
  units, early = coco.load_units(str(tmp_path / 'captions.json'), str(tmp_path / 'images'))
  report = _import('captions', units, coco.read_images, tmp_path / 'out', skipped_before=early)
  assert report.skipped == {coco.DUPLICATE_IMAGE: 1, coco.MALFORMED_IMAGE: 2,
                            coco.DUPLICATE_ANNOTATION: 1, coco.EMPTY_CAPTION: 1,
                            common.INVALID_UTF8: 1, coco.MALFORMED_ANNOTATION: 1,
                            coco.UNLISTED_IMAGE: 1}
  assert report.first_skipped[coco.DUPLICATE_ANNOTATION] == ['2/10']
  assert report.first_skipped[coco.MALFORMED_IMAGE] == ['images[3]', 'images[4]']
  records = _records(tmp_path / 'out', 'captions')
  assert {i: r['caption'] for i, r in records.items()} == {'1/10': 'first', '2/11': 'second'}
  assert records['1/10']['image'] == (tmp_path / 'images' / 'a.png').read_bytes()


def test_coco_file_not_utf8_is_one_error(tmp_path):
  path = tmp_path / 'captions.json'
  path.write_bytes('{"images": [], "annotations": [{"caption": "caf\xe9"}]}'.encode('latin-1'))
  with pytest.raises(ValueError, match='captions.json.*not valid UTF-8'):
    coco.load_units(str(path), str(tmp_path))


# ------------------------------------------------------------- images checked at import


def _sixteen_bit_png() -> bytes:
  ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
  buffer = io.BytesIO()
  Image.fromarray(ramp).save(buffer, format='PNG')
  return buffer.getvalue()


def test_images_are_checked_at_import(tmp_path):
  """Undecodable and oversized images are counted by every importer; good bytes kept as is."""
  rng = np.random.default_rng(8)
  images = {'good.png': encode_png(rng, 8, 8), 'deep.png': _sixteen_bit_png(),
            'broken.png': corrupt_image(rng, 1), 'big.png': encode_png(rng, 12, 12),
            'empty.png': b''}
  for name, data in images.items():
    (tmp_path / name).write_bytes(data)
  max_pixels = 100  # 8x8 passes, 12x12 does not
  expected = {'undecodable image': 1, 'image over max_image_pixels': 1, 'empty image': 1}

  with tarfile.open(tmp_path / 'shard.tar', 'w') as tar:
    for name, data in images.items():
      _add(tar, name, data)
      _add(tar, name.replace('.png', '.txt'), b'a caption')
  wds = webdataset.read_shard(str(tmp_path / 'shard.tar'), max_pixels=max_pixels)
  assert wds.skipped == {**expected}
  assert wds.first_skipped['image over max_image_pixels'] == ['shard.tar/big']

  with open(tmp_path / 'docs.jsonl', 'w') as f:
    f.write(json.dumps({'texts': [None] * 5 + ['text'], 'images': [*images, None]}) + '\n')
  docs = interleaved.read_documents((str(tmp_path / 'docs.jsonl'), None), max_pixels=max_pixels)
  assert docs.skipped == expected

  (tmp_path / 'captions.json').write_text(json.dumps({
      'images': [{'id': i, 'file_name': name} for i, name in enumerate(images)],
      'annotations': [{'id': i, 'image_id': i, 'caption': 'c'} for i in range(len(images))]}))
  units, early = coco.load_units(str(tmp_path / 'captions.json'), str(tmp_path))
  cocos = coco.read_images(units[0], max_pixels=max_pixels)
  assert not early.skipped and cocos.skipped == expected

  kept = [images['good.png'], images['deep.png']]  # the original bytes, 16-bit included
  assert [e['image'] for e in wds.examples] == kept == [e['image'] for e in cocos.examples]
  assert [b for b in docs.examples[0]['images'] if b] == kept
  unbounded = webdataset.read_shard(str(tmp_path / 'shard.tar'), max_pixels=0)
  assert len(unbounded.examples) == 3  # 0: no pixel bound


def _sparse_tar(path, members: list[tuple[str, bytes | int]]):
  """A tar whose int-sized members are holes: declared in the header, never written."""
  with open(path, 'wb') as f:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = data if isinstance(data, int) else len(data)
      f.write(info.tobuf(tarfile.GNU_FORMAT))
      padded = -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
      if isinstance(data, int):
        f.seek(padded, os.SEEK_CUR)
      else:
        f.write(data.ljust(padded, b'\0'))
    f.write(b'\0' * 2 * tarfile.BLOCKSIZE)


def test_tar_members_read_only_by_type_and_size(tmp_path, monkeypatch):
  rng = np.random.default_rng(9)
  good = encode_png(rng, 6, 6)
  max_pixels = 64
  bound = image_files.max_image_bytes(max_pixels)
  _sparse_tar(tmp_path / 'shard.tar', [
      ('a.png', good), ('a.txt', b'first'), ('a.mp4', 2**33),  # an 8 GiB video
      ('b.png', bound + 1), ('b.txt', b'image too big to read'),
      ('c.png', good), ('c.json', b'{"caption": "third"}'),
      ('d.png', good), ('d.txt', webdataset.MAX_CAPTION_MEMBER_BYTES + 1)])
  assert os.stat(tmp_path / 'shard.tar').st_blocks * 512 < 2**20  # the holes take no disk
  read = []
  original = tarfile.TarFile.extractfile
  monkeypatch.setattr(tarfile.TarFile, 'extractfile',
                      lambda self, member: read.append(member.name) or original(self, member))
  result = webdataset.read_shard(str(tmp_path / 'shard.tar'), max_pixels=max_pixels)
  assert read == ['a.png', 'a.txt', 'b.txt', 'c.png', 'c.json', 'd.png']
  assert [(e['id'], e['caption']) for e in result.examples] == [('shard.tar/a', 'first'),
                                                                ('shard.tar/c', 'third')]
  assert result.skipped == {webdataset.OTHER_MEMBER: 1, webdataset.OVER_SIZE: 2,
                            webdataset.NO_IMAGE: 1, webdataset.NO_CAPTION: 1}
  assert result.first_skipped[webdataset.OTHER_MEMBER] == ['shard.tar/a.mp4']
  assert result.first_skipped[webdataset.OVER_SIZE] == ['shard.tar/b.png', 'shard.tar/d.txt']


def test_unreadable_and_damaged_tar(tmp_path):
  (tmp_path / 'junk.tar').write_bytes(b'this is no tar' * 100)
  assert webdataset.read_shard(str(tmp_path / 'junk.tar')).skipped == {
      common.UNREADABLE_FILE: 1}
  rng = np.random.default_rng(10)
  with tarfile.open(tmp_path / 'whole.tar', 'w') as tar:
    for key in ('a', 'b'):
      _add(tar, f'{key}.png', encode_png(rng, 8, 8))
      _add(tar, f'{key}.txt', b'caption')
  with tarfile.open(tmp_path / 'whole.tar') as tar:
    cut_at = tar.getmember('b.png').offset_data + 10  # inside b's image
  (tmp_path / 'cut.tar').write_bytes((tmp_path / 'whole.tar').read_bytes()[:cut_at])
  cut = webdataset.read_shard(str(tmp_path / 'cut.tar'))
  assert [e['id'] for e in cut.examples] == ['cut.tar/a']
  assert cut.skipped == {webdataset.DAMAGED_TAR: 1}


# ------------------------------------------------------------------- the import report


def _texts_unit(unit) -> common.UnitResult:
  """A test unit: ('skip', n) skips n records; ('ids', [..]) gives records with these ids."""
  what, arg = unit
  result = common.UnitResult()
  if what == 'skip':
    for i in range(arg):
      result.skip('a reason', f'record {i}')
  else:
    result.examples += [{'id': i, 'text': f'text {i}'} for i in arg]
  return result


def test_report_names_the_first_offenders(tmp_path):
  assert _texts_unit(('skip', 7)).first_skipped == {
      'a reason': [f'record {i}' for i in range(common.FIRST_SKIPPED)]}  # bounded per unit
  out = tmp_path / 'out'
  units = [('skip', 7), ('ids', ['x', 'y']), ('ids', ['y', 'z', 'lone \udc80'])]
  report = _import('text', units, _texts_unit, out, options={'max_image_pixels': 5})
  assert report.written == 3
  assert report.skipped == {'a reason': 7, common.DUPLICATE_ID: 1, common.INVALID_UTF8: 1}
  assert report.first_skipped == {'a reason': [f'record {i}' for i in range(5)],
                                  common.DUPLICATE_ID: ['y'],
                                  common.INVALID_UTF8: ['lone \\udc80']}
  assert json.loads((out / common.REPORT_FILE).read_text()) == {
      'kind': 'text', 'out': str(out), 'written': 3, 'skipped': report.skipped,
      'first_skipped': report.first_skipped, 'options': {'max_image_pixels': 5}}
  assert report.summary().splitlines()[1:] == [
      '  a reason: 7 (first: record 0, record 1, record 2, record 3, record 4, ...)',
      f'  {common.DUPLICATE_ID}: 1 (first: y)',
      f'  {common.INVALID_UTF8}: 1 (first: lone \\udc80)']
  assert sorted(r['text'] for r in _records(out, 'text').values()) == [
      'text x', 'text y', 'text z']


def test_no_report_without_a_dataset_and_no_import_over_one(tmp_path):
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match=r"no usable records.*'a reason': 2"):
    _import('text', [('skip', 2)], _texts_unit, out)
  assert not (out / common.REPORT_FILE).exists()  # nothing complete, nothing reported
  _import('text', [('ids', ['a'])], _texts_unit, out)
  before = (out / common.REPORT_FILE).read_bytes()
  read = []
  for kind in ('text', 'captions'):  # the same kind, or another one beside it
    with pytest.raises(FileExistsError, match='already holds'):
      _import(kind, [('ids', ['b'])], lambda unit: read.append(unit) or _texts_unit(unit), out)
  assert not read and (out / common.REPORT_FILE).read_bytes() == before


def test_inputs_sharing_a_base_name_keep_distinct_ids(tmp_path):
  for part in ('a', 'b'):
    (tmp_path / part).mkdir()
    (tmp_path / part / 'part-0.jsonl').write_text(json.dumps({'text': part}) + '\n')
  paths = common.expand_inputs([str(tmp_path / '*' / '*.jsonl'), str(tmp_path / '*')])
  assert paths == [str(tmp_path / 'a' / 'part-0.jsonl'), str(tmp_path / 'b' / 'part-0.jsonl')]
  names = common.input_names(paths)
  assert names == ['a/part-0.jsonl', 'b/part-0.jsonl']
  report = _import('text', list(zip(paths, names)), text.read_texts, tmp_path / 'out')
  assert report.written == 2 and not report.skipped


def test_names_that_are_not_utf8_make_valid_ids(tmp_path):
  with open(os.path.join(os.fsencode(tmp_path), b'caf\xe9.jsonl'), 'wb') as f:
    f.write(b'{"text": "fine"}\n{"text": 7}\n')
  with tarfile.open(tmp_path / 'shard.tar', 'w') as tar:  # member names: surrogateescape
    _add(tar, 'caf\udce9.png', encode_png(np.random.default_rng(11), 8, 8))
    _add(tar, 'caf\udce9.txt', b'a caption')
  paths = common.expand_inputs([str(tmp_path / 'caf*.jsonl')])
  texts = _import('text', list(zip(paths, common.input_names(paths))), text.read_texts,
                  tmp_path / 'text')
  assert texts.first_skipped == {common.wrong_type('text'): ['caf\\udce9.jsonl/1']}
  assert list(_records(tmp_path / 'text', 'text')) == ['caf\\udce9.jsonl/0']
  _import('captions', [str(tmp_path / 'shard.tar')], webdataset.read_shard, tmp_path / 'wds')
  assert list(_records(tmp_path / 'wds', 'captions')) == ['shard.tar/caf\\udce9']
