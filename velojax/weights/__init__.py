"""Shipped learned-optimizer weights (`<name>.msgpack`) and their manifests (`<name>.json`); see `velojax.shipped`."""
