"""Running a grid: device slots, local and Dask schedulers, the worker process. No torch in the grid process."""
