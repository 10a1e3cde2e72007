"""fastpass: a multiprocess passthrough FUSE file server that speaks the kernel protocol itself."""

__version__ = "0.1.0"
