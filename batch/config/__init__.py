"""Configuration models and YAML loading (mappings, API, journal, feeds)."""
