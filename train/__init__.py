"""Training scripts (Accelerate). Each has ``main(argv=None)``; run them as ``python train/<script>.py --help``."""
