"""lengthwise inside other people's training loops. `integrations.transformers`: the batching,
the eval sets and the OOD monitor of lengthwise inside a Hugging Face `Trainer`."""
