"""sublim: a lab for subliminal learning."""

__version__ = "0.1.0"
