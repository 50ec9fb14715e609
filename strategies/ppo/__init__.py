"""Online RL (``ppo``, ``grpo``): a controller driving Ray actor groups, one group per role.

Roles (``roles.py``): the policy trainer group and the critic group train with ftl's sharding
backends over their own torch.distributed group; the reference and reward roles are frozen
inference actors; rollout workers (``rollout.py``) are separate actors that generate with HF
``generate`` and receive weights after every update. The controller (``controller.py``) runs in
the Ray driver process: it owns the loop, the math between roles (``advantages.py``, built on
``strategies.rl.math``) and the run-folder artefacts.

This ``__init__`` stays empty of imports: ``strategies.catalog`` imports ``options`` from this
package when a config is validated, which must not pull in torch or Ray.
"""
