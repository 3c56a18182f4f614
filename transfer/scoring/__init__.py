"""Task metrics: pure functions of gold and predicted labels. No torch."""
