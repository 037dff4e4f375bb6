"""What the training loop uses but is not the loop: its data loaders and its logs.

:mod:`esmtune.train` holds the recipe (setup, ``for epoch``, ``for batch``, evaluation); the
modules here keep plumbing out of it: ``loaders`` turns checked data into token-budget loaders
(or cached embeddings in frozen mode), ``log`` keeps train.log, the progress bar and step
metrics, ``trackers`` starts and ends the experiment trackers (TensorBoard, MLflow, W&B) that
the metrics go to, ``sharding`` sets up FSDP for the big models.
"""
