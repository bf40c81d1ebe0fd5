"""The long-running service: feed workers, configuration reload, runtime state, metrics and logging."""
