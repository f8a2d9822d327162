"""What a user does, as library calls: train a task and register it (``train.train_task``), evaluate and predict
with stored adapters (``evaluation``, ``inference``), start from stored prompts (``transfer``), learn tasks in order
(``continual``), compare adapters (``compare``); ``tasks`` converts between task specs and registry rows.

The only layer that joins the engine and the registry: it may import everything below it (``core``, ``data``,
``methods``, ``backbones``, ``engine``) and ``registry``; never ``interop``, ``reporting`` or the CLI.
"""
