"""The rclpy adapters: the ``sa2va`` lifecycle node and the live bag replay that measures it.

The only package that imports rclpy; the core (model, tracking, runtime, pipeline, eval, train) never does.
"""
