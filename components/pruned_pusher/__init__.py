"""PrunedPusher: TFX's Pusher that pushes an embedding-pruned SavedModel to TF Serving, atomically.

``component.PrunedPusher`` is the TFX component; ``executor.Executor`` its executor (a subclass of
TFX's Pusher executor); the pruning, parity, warmup and push steps are in ``pruning`` (the export's
signatures are the Trainer's own, ``components.export_signatures``).
"""
