"""What a run is and where it is kept: profiles and run specs (``config``), the results store. No torch."""
