"""Long-tail CTR prediction on semantic IDs: batches, data module, layers, models, metrics."""
