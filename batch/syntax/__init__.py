"""The two small languages a mapping is written in: time formats and XML paths.

Pure and low: configuration validates with them, the transform evaluates them."""
