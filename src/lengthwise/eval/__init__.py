"""Evaluation that runs on any model; never imports lengthwise.train."""
