"""The synthetic world's parts: scenes and pictures, language, evaluation sets.

data_pipelines.synthetic assembles them into the generated root."""
