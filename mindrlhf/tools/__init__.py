"""Stand-alone tools that work on training outputs (logs, curves); they import no MindSpore code."""
