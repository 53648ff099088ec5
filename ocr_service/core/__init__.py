"""Tasks, their store, the admission queue and the batcher."""
