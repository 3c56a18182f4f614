"""Tasks and their data: the task table (``tasks.toml``), the ``Example`` record and the readers. No torch."""
