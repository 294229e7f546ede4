"""Test set-up: 8 simulated CPU devices (for the sharding tests) and the repo on sys.path."""
import os
import sys

# Must happen before jax is imported anywhere. Affects the host (CPU) platform only.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
