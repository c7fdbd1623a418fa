"""imaged: image references, registries and pulls; the image records the CRI image service reports."""
