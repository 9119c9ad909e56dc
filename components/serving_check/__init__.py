"""ServingCheck: the candidate model, loaded in a fresh serving process and asked over TF Serving's APIs, before any push."""
