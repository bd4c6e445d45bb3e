"""KV-cache decoding speed-up: cached tokens/s over uncached tokens/s, one run, one machine.

    python benchmarks/decode.py [--config=experiments/tiny.py] [--workdir=DIR]
        [--batch_size=8] [--prompt_tokens=128] [--images=5] [--new_tokens=64]

Both paths are mm1_jax.eval.decoding.greedy_generate on the same batch: a few-shot-sized
prompt (`images` image runs and text, `prompt_tokens` long, right-padded rows of
different lengths) and `new_tokens` greedy tokens with no stop condition, so both produce
exactly `batch_size x new_tokens` tokens. Each is compiled first, then timed `repeats`
times (the median counts). The uncached path reruns the whole model (ViT included) over
the prompt and the tokens so far for every new token; the cached path runs the prompt once
and then one position per token. Prints the ratio (the goal: at least 10 for 64 new
tokens) and the JSON it is computed from. Parameters are random unless --workdir names a
trained workdir; the speed does not depend on them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import jax
import numpy as np


class _IdsOnly:
  """The little of a tokenizer decoding needs when there are no stop strings."""
  pad_id = 0

  @staticmethod
  def decode(ids) -> str:
    del ids
    return ''


def _prompt_batch(config, *, batch_size: int, prompt_tokens: int, images: int, seed: int):
  """Rows of `images` image runs interleaved with random text ids, lengths varying."""
  from data_pipelines import documents, packing
  rng = np.random.default_rng(seed)
  k = config.model.connector.num_tokens
  image_id = config.model.image_token_id
  size = config.model.vit.image_size
  vocab = config.model.decoder.vocab_size
  docs = []
  for row in range(batch_size):
    length = prompt_tokens - 3 * row  # right padding of a few positions per row
    text_per_image = max(1, (length - 1 - images * k) // images)
    tokens = [2]  # bos
    for _ in range(images):
      tokens += [image_id] * k + list(rng.integers(5, vocab, size=text_per_image))
    pixels = rng.integers(0, 256, size=(images, size, size, 3), dtype=np.uint8)
    docs.append(documents.Document(tokens=np.asarray(tokens, np.int32), images=pixels))
  return packing.rows_from_documents(docs, image_token_id=image_id,
                                     seq_len=max(len(d.tokens) for d in docs),
                                     max_images=images)


def _load_config(spec: str):
  """FILE.py or FILE.py:variant -> the file's get_config(variant)."""
  path, _, variant = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('benchmark_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant or None)


def _model(args, config):
  if args.workdir:
    import mm1_jax
    from mm1_jax.eval import evaluator
    loaded = mm1_jax.load(args.workdir)
    return loaded.config, evaluator.module_of(loaded)
  from mm1_jax.train import state as state_lib
  return config, state_lib.build_model(config, config.seed)


def _time(fn, repeats: int) -> list[float]:
  fn()  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='experiments/tiny.py')
  parser.add_argument('--workdir', default='')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--prompt_tokens', type=int, default=128)
  parser.add_argument('--images', type=int, default=5)
  parser.add_argument('--new_tokens', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  from mm1_jax.eval import decoding
  config, model = _model(args, _load_config(args.config))
  batch = _prompt_batch(config, batch_size=args.batch_size, prompt_tokens=args.prompt_tokens,
                        images=args.images, seed=0)
  no_stop = decoding.StopConditions(token_ids=())

  def run(use_cache: bool):
    generation = decoding.greedy_generate(model, batch, _IdsOnly(),
                                          max_new_tokens=args.new_tokens, stop=no_stop,
                                          use_cache=use_cache)
    assert all(len(ids) == args.new_tokens for ids in generation.token_ids)
    return generation

  same_tokens = run(True).token_ids == run(False).token_ids
  new_tokens = args.batch_size * args.new_tokens
  cached = _time(lambda: run(True), args.repeats)
  uncached = _time(lambda: run(False), args.repeats)
  cached_rate = new_tokens / statistics.median(cached)
  uncached_rate = new_tokens / statistics.median(uncached)
  record = {
      'benchmark': 'decode', 'backend': jax.default_backend(),
      'device': str(jax.devices()[0].device_kind), 'config': args.config,
      'batch_size': args.batch_size, 'prompt_tokens': int(batch['tokens'].shape[1]),
      'images_per_row': args.images, 'new_tokens': args.new_tokens,
      'cached_seconds': cached, 'uncached_seconds': uncached,
      'cached_tokens_per_s': cached_rate, 'uncached_tokens_per_s': uncached_rate,
      'same_tokens': same_tokens, 'ratio': cached_rate / uncached_rate,
  }
  print(json.dumps(record, indent=1))
  print(f'cached / uncached decode tokens per second ({args.new_tokens} new tokens): '
        f'{record["ratio"]:.1f}')


if __name__ == '__main__':
  main()
