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

from data_pipelines import grain_pipeline
from data_pipelines.formats import coco, common, interleaved, text, webdataset
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
                            skipped_before=early.skipped)
  return out, reports


def test_webdataset(prepared):
  out, reports = prepared
  source = open_source(str(out / 'wds'), 'captions')
  records = {source[i]['id']: source[i] for i in range(len(source))}
  assert len(records) == 10 == reports['wds'].written  # 2 shards x (6 - 1 without caption)
  assert records['shard0.tar/00/0002']['caption'] == 'json caption 2'
  assert records['shard1.tar/01/0000']['caption'] == 'a caption 1 0'
  assert reports['wds'].skipped == {'sample without caption': 2, 'sample without image': 2}
  assert len([f for f in os.listdir(source.dataset_dir) if 'array_record' in f]) == 2
  assert json.loads((out / 'wds' / common.REPORT_FILE).read_text())['written'] == 10


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
  assert skipped[names.index('captions')] > 0  # the corrupt image in each tar shard


def test_cli_with_workers_and_errors(raw, tmp_path):
  def prepare(*args):
    return subprocess.run([sys.executable, '-m', 'data_pipelines.prepare', *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  out = tmp_path / 'wds'
  result = prepare('webdataset', '--input', str(raw / '*.tar'), '--out', str(out),
                   '--num-workers', '2', '--num-shards', '3')
  assert result.returncode == 0, result.stderr
  assert 'Wrote 10 captions records' in result.stdout and 'skipped 4' in result.stdout
  again = prepare('webdataset', '--input', str(raw / '*.tar'), '--out', str(out))
  assert again.returncode == 1 and 'already holds' in again.stderr
  missing = prepare('text', '--input', str(raw / 'nothing*.jsonl'), '--out', str(tmp_path / 't'))
  assert missing.returncode == 1 and 'matches no file' in missing.stderr
  assert 'Traceback' not in missing.stderr
