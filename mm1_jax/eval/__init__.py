"""Few-shot evaluation as MM1 reports it: 0/4/8-shot captioning (CIDEr) and VQA (accuracy).

  tasks.py          loaders for the released formats and the named task registry
  prompting.py      demonstrations from a support split, interleaved with their images
  decoding.py       batched greedy decoding with a KV cache (and the uncached reference)
  metrics.py        cider, vqa_accuracy (with ptb_tokenizer.py and vqa_answers.py)
  settings.py       the config.eval section, resolved and checked
  evaluator.py      evaluate_model: tasks x shots -> scores and the report

The command line is `python -m mm1_jax.evaluate` (mm1_jax/evaluate.py).
"""
