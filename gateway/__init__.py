"""REST front door for both backends: routing, side-by-side comparison, load tests."""
