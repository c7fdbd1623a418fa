"""storaged: the disk side of images — the layer store, image holds, container root filesystems."""
