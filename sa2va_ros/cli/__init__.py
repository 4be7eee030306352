"""Console scripts of sa2va_ros (``sa2va-ground``, ``sa2va-convert``, ...)."""
