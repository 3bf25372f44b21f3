"""Instances as hypervisor domains: the libvirt domain XML cloudctl writes for Xen (libxl) and for
the lab's QEMU stand-in, and reading back what libvirt reports about them.
"""
