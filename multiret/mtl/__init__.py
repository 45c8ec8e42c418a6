"""Gradient methods: how per-task gradients become one update (naive, TACO, peers)."""
