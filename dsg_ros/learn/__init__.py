"""Learning: parameter sets (theta), losses, the outer loop, experiments."""
