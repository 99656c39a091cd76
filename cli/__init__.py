"""The top of the house: the `kestrel` command line and the demo, the composition root that
wires the kernel (kestrel/), the pipelines, labels, training and serving together."""
