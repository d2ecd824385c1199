"""The model: parameter roles, layers, attention, blocks and the GPT."""
