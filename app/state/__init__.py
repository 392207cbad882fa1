"""Where customers' window state and each stream's checkpoint live between batches."""
