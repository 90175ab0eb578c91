"""idmint: identifiers minted inside PostgreSQL."""

__version__ = "0.1.0"
