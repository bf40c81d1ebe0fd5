"""A local Ropo One stand-in (`server`) and the demo that runs the samples through it (`demo`)."""
