"""MM1's MoE recipe on top of a dense pod config (shared by mm1_3b_moe.py / mm1_7b_moe.py).

Published by MM1 for its MoE models: top-2 gating, load-balance loss weight 0.01, router
z-loss weight 0.001, the dense recipe otherwise. Variants of an MoE config:
  * (none)     the pod run: experts of `expert_d_ff`, sharded over mesh.expert=8;
  * `upcycle`  experts as wide as the dense FFN, so `python -m mm1_jax.train.upcycle` can
               start them from the dense config's checkpoint;
  * `local`    the dense config's `local` (tiny, synthetic world) with 8 experts of the
               tiny decoder's width, the same period and top-k.
"""

def build(dense_module, *, num_experts: int, every: int, expert_d_ff: int, name: str,
          arg: str | None):
  if arg not in (None, '', 'local', 'upcycle'):
    raise ValueError(f'experiments/{name}.py: unknown variant {arg!r} (known: local, upcycle)')
  config = dense_module.get_config('local' if arg == 'local' else None)
  moe = config.model.moe
  moe.update(num_experts=num_experts, top_k=2, every=every, dispatch='capacity',
             capacity_factor=1.25, load_balance_weight=0.01, z_loss_weight=0.001,
             renormalize=True, group_size=0, d_ff=expert_d_ff)
  if arg == 'local':
    moe.update(num_experts=8, d_ff=0)
  else:
    config.mesh.update(data=1, fsdp=-1, tensor=1, expert=8)
    # Capacity dispatch costs 2 g / 3 f of the expert matmuls for groups of g tokens: a
    # whole 4096-token row made the step 41% more FLOPs than the model's (mm1_3b_moe,
    # python -m mm1_jax.aot); groups of 1024 make it 31%, at 40 slots per expert.
    moe.group_size = 1024
  if arg == 'upcycle':
    moe.d_ff = 0
  return config

