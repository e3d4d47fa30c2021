"""Console commands of pedcc_kernels."""


def demo_main(argv=None):
    """`pedcc-demo`: generate centroids, train on the digits, compare the torch backend with the reference."""
    from .demo import main

    main(argv)
