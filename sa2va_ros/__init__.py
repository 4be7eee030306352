"""sa2va_ros: ground free-text commands with Sa2VA and track every target with SAM-2 memory."""

__version__ = "0.1.0"
