"""The `usageplace-batch` command line (`commands`)."""
