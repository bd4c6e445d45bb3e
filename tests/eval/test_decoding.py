"""Greedy decoding: the KV-cache path gives exactly the tokens of full recomputation.

The model is the tiny config's MM1 with its initial parameters (what training starts
from): the decoders must agree on any parameters, and this needs no training run.
"""

import os
import re

import jax
import pytest
from flax import nnx

from data_pipelines import documents, packing
from data_pipelines.tokenizer import Tokenizer
from experiments import tiny
from mm1_jax.eval import decoding
from mm1_jax.eval import tasks as tasks_lib
from mm1_jax.parallel import mesh as mesh_lib
from mm1_jax.parallel import rules
from mm1_jax.train import state as state_lib

CHUNK = 8  # with 17..25 new tokens every call below shares one compiled shape


@pytest.fixture(scope='module')
def setup(synthetic_root):
  config = tiny.get_config('smoke')
  config.data.root = synthetic_root
  model = state_lib.build_model(config, config.seed)
  tokenizer = Tokenizer(os.path.join(synthetic_root, 'tokenizer', 'spm.model'))
  coco = tasks_lib.resolve_task('synthetic_coco', config).load('eval')
  vqa = tasks_lib.resolve_task('synthetic_vqav2', config).load('eval')
  image = lambda example: open(example.image, 'rb').read()
  prompts = [  # different lengths: 0-shot caption, 2-shot VQA, text only, image + text
      [image(coco[0])],
      [image(vqa[0]), f'Question: {vqa[0].question} Answer: {vqa[0].answers[0]}',
       image(vqa[1]), f'Question: {vqa[1].question} Answer: {vqa[1].answers[0]}',
       image(vqa[2]), f'Question: {vqa[2].question} Answer:'],
      ['There are eight colours:'],
      [image(coco[1]), 'A picture of'],
  ]
  docs = [documents.encode_parts(p, tokenizer, image_size=config.model.vit.image_size,
                                 num_image_tokens=config.model.connector.num_tokens)
          for p in prompts]
  batch = packing.rows_from_documents(docs, image_token_id=tokenizer.image_token_id)
  return model, tokenizer, batch


def _stop(tokenizer, strings=()):
  return decoding.StopConditions(token_ids=(tokenizer.eos_id, tokenizer.image_token_id),
                                 strings=tuple(strings))


def test_cached_decoding_gives_exactly_the_uncached_tokens(setup):
  model, tokenizer, batch = setup
  runs = [decoding.greedy_generate(model, batch, tokenizer, max_new_tokens=24,
                                   stop=_stop(tokenizer), chunk_size=CHUNK, use_cache=cache)
          for cache in (True, False)]
  cached, uncached = runs
  assert cached.token_ids == uncached.token_ids
  assert cached.texts == uncached.texts
  assert sum(len(ids) for ids in cached.token_ids) > 2 * CHUNK  # not all stopped at once


def test_length_limit_and_stop_strings(setup):
  model, tokenizer, batch = setup
  unlimited = decoding.StopConditions(token_ids=())
  short = decoding.greedy_generate(model, batch, tokenizer, max_new_tokens=17,
                                   stop=unlimited, chunk_size=CHUNK)
  assert [len(ids) for ids in short.token_ids] == [17] * 4
  full = decoding.greedy_generate(model, batch, tokenizer, max_new_tokens=24, stop=unlimited,
                                  chunk_size=CHUNK)
  assert all(a[:17] == b for a, b in zip(full.token_ids, short.token_ids))
  # A stop string taken from the middle of one row's text: the text ends before it.
  row, match = next((r, m) for r, text in enumerate(full.texts)
                    for m in [re.search(r'[a-z]{2}', text[3:])] if m)
  stop_string = match.group()
  text = full.texts[row]
  cut = decoding.greedy_generate(model, batch, tokenizer, max_new_tokens=24,
                                 stop=decoding.StopConditions((), (stop_string,)),
                                 chunk_size=CHUNK)
  assert cut.texts[row] == text[:text.find(stop_string)]
  for r in range(4):
    assert stop_string not in cut.texts[r]
    assert full.token_ids[r][:len(cut.token_ids[r])] == cut.token_ids[r]


def test_decoding_under_a_training_mesh_matches_one_device(setup):
  """Parameters laid out by the sharding rules on an 8-device mesh (data 2, fsdp 2,
  tensor 2), rows split over data x fsdp: the same tokens as on one device."""
  model, tokenizer, batch = setup
  single = decoding.greedy_generate(model, batch, tokenizer, max_new_tokens=17,
                                    stop=_stop(tokenizer), chunk_size=CHUNK)
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2, expert=1))
  graphdef, state = nnx.split(model)
  sharded = nnx.merge(graphdef, jax.device_put(state, rules.state_shardings(state, mesh)))
  on_mesh = decoding.greedy_generate(sharded, batch, tokenizer, max_new_tokens=17,
                                     stop=_stop(tokenizer), chunk_size=CHUNK, mesh=mesh)
  assert on_mesh.token_ids == single.token_ids
