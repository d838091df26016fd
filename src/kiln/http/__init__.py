"""The one HTTP layer: clients, the retry policy, transfer accounting."""
