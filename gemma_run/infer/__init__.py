"""task=infer, piece by piece: prompts in, chats rendered, batches generated, results stored as they finish."""
