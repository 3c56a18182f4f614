"""The torch side: features, the multi-task model, the one training loop, look-ahead affinity."""
