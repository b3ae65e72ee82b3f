"""Command-line tools beside the asv suite (roofline, overhead, NumPy forms, auto check, report)."""
