"""Learning: parameter sets (theta), losses, the outer loop, online calibration."""
