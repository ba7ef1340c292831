"""`python -m featurestore`: the `featurestore` command line."""

from featurestore._cli import console

console()
