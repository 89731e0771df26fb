"""squeezebench: what compressing a neural network really buys on the runtimes you deploy with."""
__version__ = "0.1.0"
