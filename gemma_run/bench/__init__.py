"""task=bench, piece by piece: synthetic prompts, the bandwidth probe, the bytes a decode step reads, the table."""
