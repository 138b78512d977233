"""What a training run leaves on disk and how it is written and read: the run folder's layout, the model
card, weights files (safetensors, never arbitrary pickles) and atomic writes."""
