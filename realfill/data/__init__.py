"""Data: scenes, photo libraries, storage, manifests, the records between stages, output leases."""
