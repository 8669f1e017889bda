"""Sampling with a reward: the methods between fixed-data training and full RL. They sample from the
model, pick or pair the samples by a reward (any `alignkit.rewards` source: a reward model, a verifier, a
judge), and use or train on the result: best-of-n at inference, expert iteration (rejection-sampling
fine-tuning), RSO (statistical rejection sampling, then DPO or SLiC), online DPO and iterative DPO.

Each method is one module with its config dataclass and run function, and one command (cli/reward_sampling.py).
They sit on the rollout and reward machinery of `alignkit.rl` and `alignkit.rewards` and on the one training
loop; nothing beneath this package imports it.
"""
