"""Online reinforcement learning (PPO, REINFORCE, RLOO, GRPO) on the one training loop: rollout sources,
advantages, losses and KL pieces that work on padding-free packed micro-batches."""
