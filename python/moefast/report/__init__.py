"""What a user reads: the Markdown report, its plots and text tables."""
