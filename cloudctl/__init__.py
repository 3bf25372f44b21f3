"""cloudctl: controller for a diskless network-boot cloud."""

__version__ = "0.1.0"
