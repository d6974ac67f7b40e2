"""Benchmarks: Needle-in-a-Haystack, RAG question answering and speed, every method side by side."""
