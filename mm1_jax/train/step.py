"""The train step: masked next-token loss, gradients, update, and its metrics.

The loss is the mean cross-entropy over tokens whose `loss_mask` is 1, over the whole
global batch (not a mean of row means), so packed rows weigh by their text tokens. The
same sums split by `source_id` give the per-source losses that mixture experiments read.

With `train.grad_accum = A` the batch is split into A micro-batches scanned in sequence;
each micro-batch's loss sum is divided by the token count of the whole batch, so the
accumulated gradient equals the large-batch gradient.

The model's auxiliary scalars (MoE: 'moe/load_balance_loss', 'moe/router_z_loss',
'moe/dropped_fraction', 'moe/expert_load_max', 'moe/expert_load_min') come back as
metrics['aux'], averaged over micro-batches; the '_loss' ones are added to the training
loss. `loss` and the per-source losses are the language-model loss alone.

Non-finite loss or gradients never reach the parameters: the update is computed and then
discarded with a select, and `nonfinite` is reported so the trainer can stop or count.

Einsum letters: b = batch row, s = data source.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from mm1_jax.train import state as state_lib


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-token cross-entropy in float32: [B, L, V], [B, L] -> [B, L]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def micro_loss(params, batch, normaliser, *, graphdef, num_sources: int, num_micro: int):
  """Loss of one micro-batch, already divided by the whole batch's token count."""
  model = state_lib.merge_model(graphdef, params)
  logits, aux = model(batch)
  mask = batch['loss_mask'].astype(jnp.float32)
  row_losses = (token_losses(logits, batch['targets']) * mask).sum(axis=1)
  row_source = jax.nn.one_hot(batch['source_id'], num_sources, dtype=jnp.float32)
  total = row_losses.sum() / normaliser
  # Auxiliary losses (MoE balance, z-loss; weighted by the model) are averages already:
  # micro-batches weigh equally. They train the model but stay out of the logged LM loss.
  for key, value in aux.items():
    if key.endswith('_loss'):
      total = total + value / num_micro
  sums = {
      'loss_sum': row_losses.sum(),
      'source_loss_sum': jnp.einsum('bs,b->s', row_source, row_losses),
      'source_tokens': jnp.einsum('bs,b->s', row_source, mask.sum(axis=1)),
      'source_rows': row_source.sum(axis=0),
      'aux': {k: v / num_micro for k, v in aux.items()},
  }
  return total, sums


def _split_micro(batch, num_micro: int):
  return jax.tree.map(lambda x: x.reshape((num_micro, x.shape[0] // num_micro) + x.shape[1:]),
                      batch)


def train_step(state, batch, *, graphdef, tx: optax.GradientTransformation, num_sources: int,
               num_micro: int = 1):
  normaliser = jnp.maximum(batch['loss_mask'].astype(jnp.float32).sum(), 1.0)
  grad_fn = jax.value_and_grad(
      functools.partial(micro_loss, graphdef=graphdef, num_sources=num_sources,
                        num_micro=num_micro), has_aux=True)
  if num_micro == 1:
    (_, sums), grads = grad_fn(state['params'], batch, normaliser)
  else:
    def accumulate(carry, micro):
      (_, micro_sums), micro_grads = grad_fn(state['params'], micro, normaliser)
      return jax.tree.map(jnp.add, carry, (micro_sums, micro_grads)), None

    first = jax.tree.map(lambda x: x[:x.shape[0] // num_micro], batch)
    (_, zero_sums), zero_grads = jax.tree.map(
        jnp.zeros_like, jax.eval_shape(grad_fn, state['params'], first, normaliser))
    (sums, grads), _ = jax.lax.scan(accumulate, (zero_sums, zero_grads),
                                    _split_micro(batch, num_micro))

  grad_norm = optax.global_norm(grads)
  updates, new_opt_state = tx.update(grads, state['opt_state'], state['params'])
  new_params = optax.apply_updates(state['params'], updates)
  loss = sums.pop('loss_sum') / normaliser
  # The update itself is checked too: finite gradients can still overflow in the optimizer.
  finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            & jnp.isfinite(optax.global_norm(updates)))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = {
      'step': state['step'] + 1,
      'params': keep(new_params, state['params']),
      'opt_state': keep(new_opt_state, state['opt_state']),
  }
  metrics = dict(sums, loss=loss, grad_norm=grad_norm, text_tokens=normaliser,
                 nonfinite=jnp.logical_not(finite).astype(jnp.int32))
  return new_state, metrics


def jit_train_step(config, layout: state_lib.StateLayout, batch_shardings, tx,
                   num_sources: int):
  """The train step compiled with explicit input and output shardings (state donated)."""
  step = functools.partial(train_step, graphdef=layout.graphdef, tx=tx, num_sources=num_sources,
                           num_micro=int(config.train.grad_accum))
  return jax.jit(step, in_shardings=(layout.shardings, batch_shardings),
                 out_shardings=(layout.shardings, None), donate_argnums=(0,))
