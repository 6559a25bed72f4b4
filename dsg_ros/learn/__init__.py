"""Learning: parameter sets (theta) and calibration files, losses, the outer loop."""
