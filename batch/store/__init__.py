"""What the tool remembers and writes back: the journal of files and events, and receipts."""
