"""CTR model families, one file each: DeepFM, DCNv2, semantic-ID features, AKT."""
